import numpy as np
import pytest
from tokenizers import Tokenizer

from megatron_speech.lm_tokenizer import (
    BEGIN_OF_AUDIO,
    END_OF_AUDIO,
    AudioSegment,
    SpeechTextTokenizer,
    TextSegment,
    normalize_segments,
)

CASES = {
    "audio at both ends": [AudioSegment((0, 5, 63)), TextSegment(" Today is"), AudioSegment((7,))],
    "empty text segments": [TextSegment(""), AudioSegment((1, 2)), TextSegment(""), TextSegment(" day")],
    "adjacent audio spans": [AudioSegment((3,)), AudioSegment((4, 4))],
    "empty audio span": [TextSegment("a "), AudioSegment(()), TextSegment(" b")],
    "text only": [TextSegment("The assert statement, écrit en français.")],
    "marker strings stay text": [TextSegment(f"say {BEGIN_OF_AUDIO} <|audio_3|> {END_OF_AUDIO} now")],
}


@pytest.mark.parametrize("segments", CASES.values(), ids=CASES.keys())
def test_round_trip(speech_tokenizer, segments):
    ids = speech_tokenizer.encode(segments)
    assert speech_tokenizer.decode(ids) == normalize_segments(segments)


def test_id_layout(speech_tokenizer):
    tok = speech_tokenizer
    assert tok.audio_offset == tok.text_vocab_size
    ids = tok.encode([AudioSegment((0, 63))])
    assert ids == [tok.boa, tok.audio_offset, tok.audio_offset + 63, tok.eoa]
    assert [tok.is_audio(i) for i in (tok.audio_offset - 1, tok.audio_offset, tok.audio_offset + 63, tok.boa)] == [
        False, True, True, False,
    ]
    specials = [tok.boa, tok.eoa, tok.pad, tok.eod]
    assert len(set(specials)) == 4
    assert max(tok.vocab.values()) == tok.vocab_size - 1
    assert len(set(tok.vocab.values())) == tok.vocab_size  # every id named exactly once


def test_text_marker_strings_do_not_become_audio(speech_tokenizer):
    ids = speech_tokenizer.encode([TextSegment("<|audio_3|>")])
    assert not any(speech_tokenizer.is_audio(i) for i in ids)


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_ids_outside_vocabulary_raise(speech_tokenizer, bad):
    with pytest.raises(ValueError, match=f"token id {bad} at position 1 is outside the vocabulary"):
        speech_tokenizer.decode([5, bad])


def test_audio_codes_outside_codebook_raise(speech_tokenizer):
    with pytest.raises(ValueError, match="audio code 64 at position 1 is outside the codebook"):
        speech_tokenizer.encode([AudioSegment((0, 64))])


@pytest.mark.parametrize(
    "make_ids, message",
    [
        (lambda t: [t.boa, t.audio_offset], "ends inside an audio segment"),
        (lambda t: [t.audio_offset], "outside an audio segment"),
        (lambda t: [t.boa, 5, t.eoa], "inside an audio segment"),
    ],
)
def test_malformed_audio_markers_raise(speech_tokenizer, make_ids, message):
    with pytest.raises(ValueError, match=message):
        speech_tokenizer.decode(make_ids(speech_tokenizer))


def test_save_load_and_hf_export(speech_tokenizer, tmp_path):
    speech_tokenizer.save(tmp_path)
    loaded = SpeechTextTokenizer.load(tmp_path)
    segments = CASES["audio at both ends"]
    assert loaded.encode(segments) == speech_tokenizer.encode(segments)
    assert loaded.fingerprint() == speech_tokenizer.fingerprint()
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))  # the speech-extended HF tokenizer
    assert hf.get_vocab_size(with_added_tokens=True) == speech_tokenizer.vocab_size
    for name, token_id in speech_tokenizer.vocab.items():
        assert hf.token_to_id(name) == token_id, name


def test_fingerprint_changes_with_codebook(text_tokenizer_file, speech_tokenizer):
    other = SpeechTextTokenizer.from_text_tokenizer(text_tokenizer_file, codebook_size=65)
    assert other.fingerprint() != speech_tokenizer.fingerprint()


def test_megatron_interface(speech_tokenizer):
    from megatron.core.tokenizers import MegatronTokenizerBase

    assert isinstance(speech_tokenizer, MegatronTokenizerBase)
    ids = speech_tokenizer.tokenize("hello world")
    assert speech_tokenizer.detokenize(ids) == "hello world"
    rendered = speech_tokenizer.detokenize(speech_tokenizer.encode([AudioSegment((2,))]))
    assert rendered == f"{BEGIN_OF_AUDIO}<|audio_2|>{END_OF_AUDIO}"
    assert np.array_equal(speech_tokenizer.audio_ids([1, 2]), [speech_tokenizer.audio_offset + 1, speech_tokenizer.audio_offset + 2])

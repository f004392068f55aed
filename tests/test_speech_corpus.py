"""The synthetic speech corpus: valid audio, consistent manifests, held-out voice, determinism, reruns."""

import json
import wave

import pytest

from megatron_speech.speech.audio import read_wav
from megatron_speech.speech.corpus import MANIFESTS, SpeechCorpusConfig, build_corpus, plan
from megatron_speech.speech.text import normalize_text, wordnet_sentences
from megatron_speech.speech.voices import (
    UTTERANCES_PER_PROCESS,
    Style,
    Utterance,
    VoiceVariation,
    batches,
    synthesize,
)

FESTIVAL_BATCH = UTTERANCES_PER_PROCESS["festival"]
VOICES = ["flite:slt", "espeak:en-us", "espeak:en-gb+f3", "festival:ked_diphone", "flite:rms"]


def _config(root, **changes) -> SpeechCorpusConfig:
    values = dict(output_dir=str(root), num_sentences=12, voices=VOICES, held_out_voice="flite:rms",
                  voices_per_sentence=2, dev_sentences=3, test_sentences=3)
    return SpeechCorpusConfig(**{**values, **changes})


def _manifests(root) -> dict[str, list[dict]]:
    return {name: [json.loads(l) for l in (root / f"{name}.jsonl").read_text().splitlines()] for name in MANIFESTS}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    return root, build_corpus(_config(root))


def test_sentences_are_plain_english():
    sentences = wordnet_sentences(4, 14)
    assert len(sentences) > 20_000
    assert all(4 <= len(s.split()) <= 14 and not any(c.isdigit() for c in s) for s in sentences)


def test_wavs_are_16k_mono_and_durations_match(corpus):
    root, summary = corpus
    manifests = _manifests(root)
    assert summary["counts"]["train"]["utterances"] == 6 * 2  # 6 train sentences x 2 voices
    for lines in manifests.values():
        for line in lines:
            samples, rate = read_wav(root / line["audio_filepath"])
            assert rate == 16000 and samples.ndim == 1
            assert abs(samples.size / rate - line["duration"]) < 1e-3
            assert 0.5 < line["duration"] < 15 and abs(samples).max() > 1000  # speech, not silence
            assert line["text"] == normalize_text(line["raw_text"]) and line["text"]


def test_held_out_voice_is_only_in_held_out_manifests(corpus):
    root, _ = corpus
    manifests = _manifests(root)
    for name, lines in manifests.items():
        speakers = {line["speaker"] for line in lines}
        assert (speakers == {"flite:rms"}) if "heldout" in name else ("flite:rms" not in speakers), name
    train_text = {l["text"] for l in manifests["train"]}
    for name in ("dev", "test", "dev_heldout_voice", "test_heldout_voice"):
        assert not train_text & {l["text"] for l in manifests[name]}, name
    assert {l["text"] for l in manifests["test"]} == {l["text"] for l in manifests["test_heldout_voice"]}


def test_rerun_reuses_wavs_and_rewrites_identical_manifests(corpus):
    root, _ = corpus
    wav = root / _manifests(root)["train"][0]["audio_filepath"]
    before = {name: (root / f"{name}.jsonl").read_bytes() for name in MANIFESTS}
    mtime = wav.stat().st_mtime_ns
    wav_missing = root / _manifests(root)["dev"][0]["audio_filepath"]
    wav_missing.unlink()  # as if the first run had died before this file
    summary = build_corpus(_config(root))
    assert summary["synthesized_now"] == 1 and wav_missing.exists()
    assert wav.stat().st_mtime_ns == mtime
    assert before == {name: (root / f"{name}.jsonl").read_bytes() for name in MANIFESTS}


def test_same_seed_same_corpus_other_seed_other_plan(corpus, tmp_path):
    root, first = corpus
    again = build_corpus(_config(tmp_path / "again"))
    assert again["plan_sha256"] == first["plan_sha256"]
    a, b = _manifests(root)["train"][0], _manifests(tmp_path / "again")["train"][0]
    assert (root / a["audio_filepath"]).read_bytes() == (tmp_path / "again" / b["audio_filepath"]).read_bytes()
    sentences = [f"sentence number {w} is here" for w in "abcdefghijklmnop"]
    assert plan(_config(tmp_path, seed=1), sentences) != plan(_config(tmp_path, seed=2), sentences)


def test_unknown_held_out_voice_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="is not among voices"):
        _config(tmp_path, held_out_voice="flite:nobody")


def test_voice_names_are_checked(tmp_path):
    for voice in ("say:alex", "flite:", 'festival:ked_diphone) (system "rm"'):
        with pytest.raises(ValueError, match="voice"):
            _config(tmp_path, voices=[*VOICES, voice])


def test_a_missing_festival_voice_names_itself_and_the_utterance(tmp_path):
    utterance = Utterance("s7", "hello there", "festival:nobody_diphone", "train")
    with pytest.raises(RuntimeError, match="festival:nobody_diphone failed on s7"):
        synthesize([utterance], tmp_path, 16000)
    assert not utterance.wav_path(tmp_path).exists()


def test_festival_utterances_share_a_process_per_voice_and_the_rest_go_one_by_one():
    voices = ["festival:ked_diphone", "flite:slt", "festival:kal_diphone"]
    utterances = [Utterance(f"s{i}", "a b c d", voices[i % 3], "train") for i in range(3 * FESTIVAL_BATCH + 3)]
    work = batches(utterances)
    assert sorted(u.id for b in work for u in b) == sorted(u.id for u in utterances)
    assert all(len({u.voice for u in b}) == 1 and len(b) <= FESTIVAL_BATCH for b in work)
    assert all(len(b) == 1 for b in work if b[0].voice == "flite:slt")
    assert sum(1 for b in work if b[0].voice.startswith("festival:")) == 4  # 65 utterances each: 64 + 1


def test_unreadable_wav_names_the_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00not a wav")
    with pytest.raises(ValueError, match="bad.wav: not a readable wav"):
        read_wav(bad)
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(16000), w.writeframes(b"\x80" * 100)
    with pytest.raises(ValueError, match="8bit.wav: 8-bit audio"):
        read_wav(tmp_path / "8bit.wav")


def test_training_utterances_draw_their_own_style_and_held_out_ones_keep_the_plain_voice(tmp_path):
    sentences = [f"sentence number {w} is here" for w in "abcdefghijklmnop"]
    variation = VoiceVariation()
    utterances = plan(_config(tmp_path, variation=variation), sentences)
    train = [u for u in utterances if u.manifest == "train"]
    assert len({u.style for u in train}) == len(train)  # every utterance its own speaker
    for u in train:
        assert variation.warp[0] <= u.style.warp <= variation.warp[1]
        assert variation.tempo[0] <= u.style.tempo <= variation.tempo[1]
        assert u.style.espeak_pitch == 50 or u.voice.startswith("espeak:")
    assert all(u.style == Style() for u in utterances if u.manifest != "train")
    assert plan(_config(tmp_path, variation=variation), sentences) == utterances  # drawn from the seed
    plain = plan(_config(tmp_path), sentences)
    assert all(u.style == Style() for u in plain)
    assert [(u.id, u.voice) for u in plain] == [(u.id, u.voice) for u in utterances]  # same plan otherwise
    assert {u.wav_path(tmp_path) for u in plain}.isdisjoint(u.wav_path(tmp_path) for u in utterances if u.style != Style())


@pytest.mark.parametrize("voice", ["flite:slt", "espeak:en-us", "festival:ked_diphone",
                                   "festival:cmu_us_slt_arctic_hts"])
def test_style_changes_the_audio(tmp_path, voice):
    def duration(style: Style) -> float:
        utterance = Utterance("s0", "the surface of the pond is dark and shadowed", voice, "train", style)
        synthesize([utterance], tmp_path, 16000)
        samples, rate = read_wav(utterance.wav_path(tmp_path))
        return samples.size / rate

    plain = duration(Style())
    assert duration(Style(warp=1.1)) == pytest.approx(plain / 1.1, rel=0.01)  # resampled: exactly shorter
    assert duration(Style(tempo=1.15)) < 0.95 * plain < 0.95 * duration(Style(tempo=0.85))

"""Sample layouts (contract 5): the one place that turns records into LM token sequences.

    text         document tokens                                         <eod>
    speech       <|begin_of_audio|> audio <|end_of_audio|>                <eod>
    asr          <|begin_of_audio|> audio <|end_of_audio|> transcript     <eod>
    tts          text <|begin_of_audio|> audio <|end_of_audio|>           <eod>
                 ([voice] text ... with ``voice_field``: a voice-conditioned text-to-token model)
    interleaved  text and audio segments in record order                  <eod>

Records are validated here, so a bad one is reported with its file and line before any byte of it
is written. ``parse_record`` gives segments; the tokenizer's ``encode`` (the pure-Python reference)
or the C++ builder turns segments into ids with the same rule.
"""

from __future__ import annotations

from pathlib import Path

from megatron_speech.data.corpus import CorpusError, check_unicode, text_field
from megatron_speech.data.speech_tokens import SPEECH_FIELD
from megatron_speech.lm_tokenizer import AudioSegment, Segment, SpeechTextTokenizer, TextSegment

LAYOUTS = ("text", "speech", "asr", "tts", "interleaved")
SPEECH_TOKEN_LAYOUTS = ("speech", "asr", "tts")  # read speech-token jsonl (contract 2)


def voice_text(voice: str | None, text: str) -> str:
    """The words a TTS sample (or a synthesis prompt) reads, with the voice named first. Why: the
    Whisper-derived tokenizer's codes carry the voice as well as the words, and a text-to-token model
    not told which voice to speak can only predict an average of the corpus's voices. (At mini scale
    it measured no better: examples/synthesize/README.md.)"""
    return text if voice is None else f"[{voice}] {text}"


def check_voice_field(layout: str, voice_field: str | None) -> None:
    """A voice is named only in TTS pairs (the text a text-to-token model speaks)."""
    if voice_field is not None and layout != "tts":
        raise ValueError(f"a voice field is for the tts layout only, not {layout!r}")


def _voice(record: dict, voice_field: str, path, number: int) -> str:
    if voice_field not in record:
        raise CorpusError(path, number, f"missing field {voice_field!r} (the voice this TTS pair is spoken in)")
    voice = record[voice_field]
    if not isinstance(voice, str) or not voice.strip() or any(c in voice for c in "[]\n"):
        raise CorpusError(path, number, f"field {voice_field!r} (the voice) must be a non-empty string "
                                        f"without brackets or newlines, got {voice!r}")
    return voice


def _codes(value: object, codebook_size: int, path, number: int, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise CorpusError(path, number, f"{where} must be a list of integers")
    bad = next((c for c in value if not 0 <= c < codebook_size), None)
    if bad is not None:
        raise CorpusError(path, number, f"audio id {bad} in {where} is outside the speech vocabulary [0, {codebook_size})")
    return tuple(value)


def _speech(record: dict, codebook_size: int, path, number: int) -> AudioSegment:
    if SPEECH_FIELD not in record:
        raise CorpusError(path, number, f"missing field {SPEECH_FIELD!r}")
    codes = _codes(record[SPEECH_FIELD], codebook_size, path, number, SPEECH_FIELD)
    if not codes:
        raise CorpusError(path, number, "empty document (no speech tokens)")
    return AudioSegment(codes)


def _interleaved(record: dict, codebook_size: int, path, number: int) -> list[Segment]:
    segments = record.get("segments")
    if not isinstance(segments, list) or not segments:
        raise CorpusError(path, number, "missing or empty field 'segments'")
    out: list[Segment] = []
    for i, seg in enumerate(segments):
        if isinstance(seg, dict) and isinstance(seg.get("text"), str) and len(seg) == 1:
            out.append(TextSegment(check_unicode(seg["text"], path, number, f"segments[{i}].text")))
        elif isinstance(seg, dict) and "audio" in seg and len(seg) == 1:
            codes = _codes(seg["audio"], codebook_size, path, number, f"segments[{i}].audio")
            if not codes:  # as the speech layout: an audio segment of no tokens is no speech
                raise CorpusError(path, number, f"segments[{i}].audio is empty (no speech tokens)")
            out.append(AudioSegment(codes))
        else:
            raise CorpusError(path, number, f"segments[{i}] is neither {{'text': str}} nor {{'audio': [ids]}}")
    if not any(isinstance(s, AudioSegment) or s.text.strip() for s in out):
        raise CorpusError(path, number, "empty document")
    return out


def parse_record(
    layout: str, record: object, codebook_size: int, path: Path | str, number: int, field: str = "text",
    voice_field: str | None = None,
) -> list[Segment]:
    """The record's segments in its layout; raises ``CorpusError`` naming file and line.
    ``voice_field`` (tts only): the record's field naming its voice, put before the text."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    check_voice_field(layout, voice_field)
    if isinstance(record, CorpusError):
        raise record
    if not isinstance(record, dict):
        raise CorpusError(path, number, f"record is {type(record).__name__}, not an object")
    if layout == "text":
        return [TextSegment(text_field(record, field, path, number))]
    if layout == "speech":
        return [_speech(record, codebook_size, path, number)]
    if layout == "asr":
        return [_speech(record, codebook_size, path, number), TextSegment(text_field(record, field, path, number))]
    if layout == "tts":
        text = text_field(record, field, path, number)
        if voice_field is not None:
            text = voice_text(_voice(record, voice_field, path, number), text)
        return [TextSegment(text), _speech(record, codebook_size, path, number)]
    return _interleaved(record, codebook_size, path, number)


def layout_ids(tokenizer: SpeechTextTokenizer, segments: list[Segment]) -> list[int]:
    """Reference layout in pure Python: segment ids, then end-of-document."""
    return [*tokenizer.encode(segments), tokenizer.eod]

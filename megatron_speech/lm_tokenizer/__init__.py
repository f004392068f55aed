"""The speech-text LM vocabulary (text ids, then audio codes, then special tokens) and the small
byte-level BPE the default recipe trains. Not the speech tokenizer (``megatron_speech.speech_tokenizer``)."""

from megatron_speech.lm_tokenizer.speech_text_tokenizer import (
    BEGIN_OF_AUDIO,
    END_OF_AUDIO,
    AudioSegment,
    Segment,
    SpeechTextTokenizer,
    TextSegment,
    normalize_segments,
)

__all__ = [
    "BEGIN_OF_AUDIO",
    "END_OF_AUDIO",
    "AudioSegment",
    "Segment",
    "SpeechTextTokenizer",
    "TextSegment",
    "normalize_segments",
]

"""The speech-text vocabulary and the small text tokenizer the default recipe trains."""

from megatron_speech.tokenizer.speech_text_tokenizer import (
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

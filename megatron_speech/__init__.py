"""megatron_speech: speech-text pre-training with synthetic interleaved data on Megatron-Core."""

from megatron_speech import backends as _backends

__version__ = "0.1.0"

_backends.silence_fallback_warnings()

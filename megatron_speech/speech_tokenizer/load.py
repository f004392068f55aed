"""Either speech tokenizer, by what a recipe or a ``.nemo`` file says it is.

The Conformer tokenizer trained from scratch (``model.SpeechTokenizerModel``) and the Whisper-derived
one (``whisper_model.WhisperSpeechTokenizerModel``) answer the same calls (``tokenize``,
``continuous_vectors``, ``transcribe_tokens``, ``transcribe_vectors``, ``transcribe_audio``), so tools take a
``.nemo`` of either.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import yaml

MODEL_TYPES = {
    "conformer": "megatron_speech.speech_tokenizer.model.SpeechTokenizerModel",
    "whisper_vq": "megatron_speech.speech_tokenizer.whisper_model.WhisperSpeechTokenizerModel",
}


def model_class(model_type: str):
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r}: expected one of {sorted(MODEL_TYPES)}")
    module, _, name = MODEL_TYPES[model_type].rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def nemo_model_type(path: str | Path) -> str:
    """Which tokenizer a ``.nemo`` holds, from the ``target`` its ``model_config.yaml`` records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such speech tokenizer (.nemo)")
    try:
        with tarfile.open(path) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
            target = yaml.safe_load(tar.extractfile(member))["target"]
    except (tarfile.TarError, StopIteration, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a .nemo file of a speech tokenizer ({exc})") from None
    for model_type, known in MODEL_TYPES.items():
        if target == known:
            return model_type
    raise ValueError(f"{path}: holds a {target}, not a speech tokenizer")


def load_speech_tokenizer(path: str | Path):
    """The speech tokenizer in a ``.nemo`` file (either kind), on the CPU, in eval mode."""
    return model_class(nemo_model_type(path)).restore_from(str(path), map_location="cpu").eval()


def describe(path: str | Path, model) -> dict:
    """What contract 2 records beside a token file: which tokenizer (``model``, restored from
    ``path``) made the codes, at what rate, from how many, and a fingerprint of the ``.nemo``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return {"name": Path(path).stem, "model_type": nemo_model_type(path), "token_rate": model.token_rate,
            "codebook_size": int(model.quantizer.num_codes), "fingerprint": digest.hexdigest()[:16],
            "model": str(path)}

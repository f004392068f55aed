"""Speech-token jsonl (contract 2) and the record of the speech tokenizer that made it.

A line is ``{id, text, speech_tokens}``, and ``speaker`` when the manifest names one;
``speech_tokens`` are codebook indices ``0..K-1`` of one speech tokenizer, not LM ids. Codes of two
tokenizers look alike (small integers), so a file read with the wrong tokenizer, or laid into an LM
vocabulary with another codebook size, would train on noise without a single error. Beside
``tokens.jsonl`` lies ``tokens.jsonl.speech_tokenizer.json``: the tokenizer's name, kind, token rate,
codebook size and a fingerprint of its ``.nemo`` file. The tools that read token files check it
when it is there (files from elsewhere may lack it).
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_speech import atomic

SPEECH_FIELD = "speech_tokens"
INFO_SUFFIX = ".speech_tokenizer.json"
INFO_KEYS = ("name", "model_type", "token_rate", "codebook_size", "fingerprint")


class SpeechTokenMismatch(ValueError):
    """Speech tokens used with a tokenizer or vocabulary other than the one that made them."""


def info_path(tokens: Path | str) -> Path:
    return Path(f"{tokens}{INFO_SUFFIX}")


def write_info(tokens: Path | str, info: dict) -> None:
    """Record ``info`` (``INFO_KEYS``, plus anything else) beside the token file, atomically."""
    missing = [k for k in INFO_KEYS if k not in info]
    if missing:
        raise ValueError(f"speech tokenizer info lacks {missing}")
    atomic.write_json(info_path(tokens), info)


def read_info(tokens: Path | str) -> dict | None:
    """The recorded tokenizer of a token file, or None for a file that has no record."""
    path = info_path(tokens)
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a speech tokenizer record ({exc})") from None
    if not isinstance(info, dict) or any(k not in info for k in INFO_KEYS):
        raise ValueError(f"{path}: a speech tokenizer record needs the keys {list(INFO_KEYS)}")
    return info


def check_codebook(tokens: Path | str, codebook_size: int, against: str) -> dict | None:
    """Refuse tokens whose tokenizer has another codebook size than ``against`` (a vocabulary) expects."""
    info = read_info(tokens)
    if info is not None and int(info["codebook_size"]) != codebook_size:
        raise SpeechTokenMismatch(
            f"{tokens}: made by speech tokenizer {info['name']!r} with {info['codebook_size']} codes, "
            f"but {against} has {codebook_size} speech codes; rebuild one of them to match")
    return info


def check_same_tokenizer(tokens: Path | str, info: dict, model: str) -> None:
    """Refuse to read tokens with a speech tokenizer (``info`` of ``model``) other than their own."""
    recorded = read_info(tokens)
    if recorded is not None and recorded["fingerprint"] != info["fingerprint"]:
        raise SpeechTokenMismatch(
            f"{tokens}: made by speech tokenizer {recorded['name']!r} ({recorded['fingerprint']}), "
            f"not by {model} ({info['name']!r}, {info['fingerprint']}); its codes mean nothing to that model")


def codebook_size_of(tokens: Path | str) -> int:
    """The codebook size recorded for a token file (to size a vocabulary from it)."""
    info = read_info(tokens)
    if info is None:
        raise FileNotFoundError(f"{info_path(tokens)}: no speech tokenizer record beside {tokens}")
    return int(info["codebook_size"])

"""Megatron indexed binaries (contract 6): ``.bin``/``.idx`` in LM ids plus a metadata sidecar.

The sidecar (``<prefix>.meta.json``) names the tokenizer (by fingerprint), the sample layout and the
sources, so training refuses data tokenized with another vocabulary instead of silently learning
from wrong ids. Files are written under temporary names and renamed into place, metadata last: a
prefix whose metadata exists is complete. ``megatron_speech.data.preprocess`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from megatron_speech import atomic

META_SUFFIX = ".meta.json"


def token_dtype(vocab_size: int) -> type[np.number]:
    """uint16 while every id fits in it, int32 beyond (Megatron reads either from the .idx)."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def metadata_path(prefix: str | Path) -> Path:
    return Path(str(prefix) + META_SUFFIX)


def read_metadata(prefix: str | Path) -> dict:
    path = metadata_path(prefix)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: {prefix} is not a complete indexed dataset")
    return json.loads(path.read_text())


def write_metadata(prefix: str | Path, metadata: dict) -> None:
    atomic.write_json(metadata_path(prefix), metadata)


def read_sequence_lengths(idx_path: str | Path) -> np.ndarray:
    """The int32 sequence lengths of a Megatron ``.idx`` file (header layout: see csrc/)."""
    with open(idx_path, "rb") as f:
        header = f.read(34)
        if header[:9] != b"MMIDIDX\x00\x00":
            raise ValueError(f"{idx_path}: not a Megatron index file")
        count = int.from_bytes(header[18:26], "little")
        return np.frombuffer(f.read(4 * count), dtype=np.int32)

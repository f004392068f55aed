"""Megatron indexed binaries (contract 6): ``.bin``/``.idx`` in LM ids plus a metadata sidecar.

The sidecar (``<prefix>.meta.json``) names the tokenizer (by fingerprint), the sample layout and the
sources, so training refuses data tokenized with another vocabulary instead of silently learning
from wrong ids. Files are written under temporary names and renamed into place, metadata last: a
prefix whose metadata exists is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

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
    path = metadata_path(prefix)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_documents(
    prefix: str | Path, documents: Iterable[np.ndarray], vocab_size: int, metadata: dict
) -> int:
    """Write whole documents with Megatron's own builder; returns the number of tokens."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    import torch

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    metadata_path(prefix).unlink(missing_ok=True)
    tmp = prefix.with_name(prefix.name + ".tmp")
    dtype = token_dtype(vocab_size)
    builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
    total = 0
    for doc in documents:
        builder.add_document(torch.from_numpy(np.asarray(doc, dtype=np.int64)), [len(doc)])
        total += len(doc)
    builder.finalize(f"{tmp}.idx")
    os.replace(f"{tmp}.bin", f"{prefix}.bin")
    os.replace(f"{tmp}.idx", f"{prefix}.idx")
    write_metadata(prefix, {**metadata, "vocab_size": vocab_size, "num_tokens": total,
                            "dtype": np.dtype(dtype).name})
    return total

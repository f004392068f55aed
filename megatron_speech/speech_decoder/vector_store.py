"""The speech tokenizer's continuous vectors (just before its quantizer), stored for the decoder.

A diagnostic input, not a product one: a speech LM emits tokens, never these vectors. A decoder
trained on them (``model.net.feature_dim``) and one trained on the tokens, same size and steps,
tell how much of the decoded audio's loss is the quantization's and how much the decoder's.

A store is two files beside each other: ``<prefix>.f16``, every utterance's vectors [tokens, D] as
float16 rows one after another, and ``<prefix>.json``, ``{"dim": D, "tokenizer": ..., "index": {id:
[first row, rows]}}``. Both are written under temporary names and renamed into place, the index
last: a store with an index is complete, and a rerun of a complete store does nothing (a killed
run starts again; the training set takes about as long as tokenizing it). One writer at a time:
``<prefix>.lock`` (``jobs.exclusive_lock``) refuses a second one by name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from megatron_speech import atomic, jobs
from megatron_speech.data.corpus import CorpusError, read_records
from megatron_speech.speech.audio import load_audio, pad_batch


def store_paths(prefix: str | Path) -> tuple[Path, Path]:
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".f16"), prefix.with_name(prefix.name + ".json")


def write_store(tokenizer, manifest: str | Path, prefix: str | Path, batch_size: int = 16,
                tokenizer_path: str = "") -> dict:
    """Every utterance of ``manifest`` through ``tokenizer.continuous_vectors``; returns the index."""
    manifest = Path(manifest)
    rows_path, index_path = store_paths(prefix)
    if index_path.exists():
        return json.loads(index_path.read_text())
    lock = Path(prefix).with_name(Path(prefix).name + ".lock")
    with jobs.exclusive_lock(lock, f"{rows_path}: the vector store is being written"):
        if index_path.exists():  # finished by another writer since the check above
            return json.loads(index_path.read_text())
        return _write(tokenizer, manifest, rows_path, index_path, batch_size, tokenizer_path)


def _write(tokenizer, manifest: Path, rows_path: Path, index_path: Path, batch_size: int, tokenizer_path: str) -> dict:
    from tqdm import tqdm

    rate = tokenizer.cfg.sample_rate
    index: dict[str, list[int]] = {}
    dim, written = 0, 0
    tmp = rows_path.with_name(f"{rows_path.name}.{os.getpid()}.tmp")
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    records = list(read_records(manifest))
    with open(tmp, "wb") as out, tqdm(total=len(records), desc=f"vectors {manifest.name}", unit="utt") as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start: start + batch_size]
            for number, line in batch:
                if not isinstance(line, dict) or "id" not in line or "audio_filepath" not in line:
                    raise CorpusError(manifest, number, "a speech manifest line needs 'id' and 'audio_filepath'")
            audio = [load_audio(manifest, number, line, rate) for number, line in batch]
            for (number, line), vectors in zip(batch, tokenizer.continuous_vectors(*pad_batch(audio))):
                if line["id"] in index:
                    raise CorpusError(manifest, number, f"id {line['id']!r} appears twice")
                rows = vectors.numpy().astype(np.float16)
                dim = rows.shape[1]
                out.write(rows.tobytes())
                index[line["id"]] = [written, rows.shape[0]]
                written += rows.shape[0]
            bar.update(len(batch))
    os.replace(tmp, rows_path)
    value = {"dim": dim, "rows": written, "tokenizer": tokenizer_path, "manifest": str(manifest), "index": index}
    atomic.write_json(index_path, value)
    return value


class VectorStore:
    """Read-only view of a store: ``store[id]`` is that utterance's vectors [tokens, D] (float32)."""

    def __init__(self, prefix: str | Path) -> None:
        rows_path, index_path = store_paths(prefix)
        if not index_path.exists():
            raise FileNotFoundError(f"{index_path}: no complete vector store at {prefix} (write it with "
                                    "examples/speech_decoder/continuous_vectors.py)")
        meta = json.loads(index_path.read_text())
        self.path, self.dim, self.index = rows_path, int(meta["dim"]), meta["index"]
        self.rows = np.memmap(rows_path, dtype=np.float16, mode="r").reshape(-1, self.dim)
        if self.rows.shape[0] != int(meta["rows"]):
            raise ValueError(f"{rows_path}: {self.rows.shape[0]} rows, its index {index_path} says {meta['rows']}")

    def __contains__(self, utterance_id: str) -> bool:
        return utterance_id in self.index

    def __getitem__(self, utterance_id: str) -> torch.Tensor:
        first, count = self.index[utterance_id]
        return torch.from_numpy(np.asarray(self.rows[first: first + count], dtype=np.float32))

"""Text corpora → indexed binaries in LM ids (the text layout: document tokens + end-of-document)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_speech.data.corpus import read_text_records
from megatron_speech.data.indexed import write_documents
from megatron_speech.tokenizer import SpeechTextTokenizer


def _text_documents(
    paths: list[Path], tokenizer: SpeechTextTokenizer, field: str, batch_size: int
) -> Iterator[np.ndarray]:
    def encode(batch: list[str]) -> Iterator[np.ndarray]:
        for ids in tokenizer.tokenize_batch(batch):
            yield np.asarray([*ids, tokenizer.eod], dtype=np.int64)

    batch: list[str] = []
    for path in paths:
        for record in read_text_records(path, field):
            batch.append(record.text)
            if len(batch) == batch_size:
                yield from encode(batch)
                batch = []
    yield from encode(batch)


def preprocess_text(
    inputs: list[str | Path], tokenizer: SpeechTextTokenizer, output_prefix: str | Path,
    field: str = "text", batch_size: int = 1000,
) -> int:
    paths = [Path(p) for p in inputs]
    documents = tqdm(_text_documents(paths, tokenizer, field, batch_size), desc="documents", unit="doc")
    return write_documents(
        output_prefix,
        documents,
        tokenizer.vocab_size,
        {"layout": "text", "tokenizer_fingerprint": tokenizer.fingerprint(), "sources": [str(p) for p in paths]},
    )

"""Corpora → Megatron indexed binaries, in parallel, resumable, and byte-reproducible.

The inputs are cut into chunks (line-aligned byte ranges of plain jsonl; whole gz/parquet files).
Each chunk becomes one shard ``<prefix>.shards/NNNNN.{bin,idx}``, written under temporary names,
and is complete once its ``NNNNN.json`` (counts and skipped records) has been renamed into place.
Workers take chunks in any order; the merge concatenates shards in chunk order. So:

- the output does not depend on the number of workers, and a rerun is byte-identical;
- a killed run loses at most the chunks in flight: a rerun skips complete shards and redoes partial
  ones;
- the final ``.bin``/``.idx`` are renamed into place, and the metadata that marks the dataset
  complete is written last, so a reader never sees a truncated or inconsistent pair.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_speech import atomic
from megatron_speech.data import indexed
from megatron_speech.data.corpus import CorpusError, check_format, is_splittable, read_records
from megatron_speech.data.layouts import LAYOUTS, layout_ids, parse_record
from megatron_speech.tokenizer import AudioSegment, Segment, SpeechTextTokenizer

# Test hook: a worker exits abruptly after writing this many documents of a chunk (a killed job).
CRASH_AFTER_DOCS_ENV = "MEGATRON_SPEECH_CRASH_AFTER_DOCS"


@dataclass
class PreprocessConfig:
    inputs: list[str]
    output_prefix: str
    tokenizer: str  # directory written by SpeechTextTokenizer.save
    layout: str = "text"
    field: str = "text"
    workers: int = 1
    on_error: str = "stop"  # stop | skip
    chunk_bytes: int = 64 << 20
    batch_documents: int = 1024
    backend: str = "cpp"  # cpp | python (the reference: Python layout + Megatron's builder)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {self.on_error!r}")
        if self.backend not in ("cpp", "python"):
            raise ValueError(f"backend must be 'cpp' or 'python', got {self.backend!r}")
        if not self.inputs:
            raise ValueError("no input files")
        if self.chunk_bytes < 1 or self.batch_documents < 1 or self.workers < 1:
            raise ValueError("chunk_bytes, batch_documents and workers must be positive")


@dataclass(frozen=True)
class Chunk:
    index: int
    path: str
    start: int
    end: int | None  # None: to the end of the file


@dataclass
class ShardStats:
    documents: int = 0
    tokens: int = 0
    errors: list[dict] = field(default_factory=list)


def plan_chunks(inputs: list[str], chunk_bytes: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for name in inputs:
        path = Path(name)
        check_format(path)
        size = path.stat().st_size
        if not is_splittable(path) or size <= chunk_bytes:
            chunks.append(Chunk(len(chunks), str(path), 0, None))
            continue
        for start in range(0, size, chunk_bytes):
            end = start + chunk_bytes if start + chunk_bytes < size else None
            chunks.append(Chunk(len(chunks), str(path), start, end))
    return chunks


# ---- one shard ---------------------------------------------------------------------------------


class _CppShardWriter:
    def __init__(self, bin_path: str, tokenizer: SpeechTextTokenizer) -> None:
        from megatron_speech import _C

        self.tokenizer = tokenizer
        dtype_code = 8 if indexed.token_dtype(tokenizer.vocab_size) == np.uint16 else 4
        self.builder = _C.IndexedBuilder(bin_path, dtype_code, tokenizer.vocab_size)

    def add(self, documents: list[list[Segment]]) -> None:
        tok = self.tokenizer
        texts = [s.text for doc in documents for s in doc if not isinstance(s, AudioSegment)]
        text_ids = tok.tokenize_batch(texts)
        kinds, lengths, text_parts, audio_parts = [], [], [], []
        next_text = iter(text_ids)
        for doc in documents:
            for seg in doc:
                if isinstance(seg, AudioSegment):
                    kinds.append(1)
                    lengths.append(len(seg.codes))
                    audio_parts.append(np.asarray(seg.codes, dtype=np.int32))
                else:
                    ids = next(next_text)
                    kinds.append(0)
                    lengths.append(len(ids))
                    text_parts.append(np.asarray(ids, dtype=np.int32))
        self.builder.add_segments(
            _concat(text_parts), _concat(audio_parts), np.asarray(kinds, dtype=np.uint8),
            np.asarray(lengths, dtype=np.int64), np.asarray([len(d) for d in documents], dtype=np.int64),
            tok.audio_offset, tok.codebook_size, tok.boa, tok.eoa, tok.eod,
        )

    def finalize(self, idx_path: str) -> int:
        self.builder.finalize(idx_path)
        return self.builder.num_tokens


class _PythonShardWriter:
    """The reference path: Python layout feeding Megatron-Core's own ``IndexedDatasetBuilder``."""

    def __init__(self, bin_path: str, tokenizer: SpeechTextTokenizer) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.tokenizer = tokenizer
        self.builder = IndexedDatasetBuilder(bin_path, dtype=indexed.token_dtype(tokenizer.vocab_size))
        self.tokens = 0

    def add(self, documents: list[list[Segment]]) -> None:
        for doc in documents:
            ids = np.asarray(layout_ids(self.tokenizer, doc), dtype=np.int64)
            self.builder.add_document(ids, [len(ids)])
            self.tokens += len(ids)

    def finalize(self, idx_path: str) -> int:
        self.builder.finalize(idx_path)
        return self.tokens


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def _shard_paths(config: PreprocessConfig, chunk: Chunk) -> dict[str, Path]:
    base = Path(f"{config.output_prefix}.shards") / f"{chunk.index:05d}"
    return {kind: Path(f"{base}.{kind}") for kind in ("bin", "idx", "json")}


def _documents(config: PreprocessConfig, chunk: Chunk, codebook_size: int, stats: ShardStats) -> Iterator[list[Segment]]:
    skip = config.on_error == "skip"
    for number, record in read_records(chunk.path, chunk.start, chunk.end, strict=not skip):
        try:
            yield parse_record(config.layout, record, codebook_size, chunk.path, number, config.field)
        except CorpusError as exc:
            if not skip:
                raise
            stats.errors.append({"file": exc.path, "record": exc.record, "reason": exc.reason})


def process_chunk(config: PreprocessConfig, chunk: Chunk, tokenizer: SpeechTextTokenizer) -> ShardStats:
    """Write one chunk's shard; returns its counts. A no-op if the shard is already complete."""
    paths = _shard_paths(config, chunk)
    if paths["json"].exists():
        return ShardStats(**json.loads(paths["json"].read_text()))
    paths["bin"].parent.mkdir(parents=True, exist_ok=True)
    tmp = {kind: p.with_name(p.name + ".tmp") for kind, p in paths.items()}
    writer_cls = _CppShardWriter if config.backend == "cpp" else _PythonShardWriter
    writer = writer_cls(str(tmp["bin"]), tokenizer)
    stats = ShardStats()
    crash_after = int(os.environ.get(CRASH_AFTER_DOCS_ENV, "0"))
    batch: list[list[Segment]] = []
    for doc in _documents(config, chunk, tokenizer.codebook_size, stats):
        batch.append(doc)
        if crash_after and stats.documents + len(batch) >= crash_after:
            writer.add(batch)
            os._exit(17)
        if len(batch) == config.batch_documents:
            writer.add(batch)
            stats.documents += len(batch)
            batch = []
    writer.add(batch)
    stats.documents += len(batch)
    stats.tokens = writer.finalize(str(tmp["idx"]))
    os.replace(tmp["bin"], paths["bin"])
    os.replace(tmp["idx"], paths["idx"])
    tmp["json"].write_text(json.dumps(asdict(stats)))
    os.replace(tmp["json"], paths["json"])
    return stats


# ---- the whole job -----------------------------------------------------------------------------

_worker_tokenizer: SpeechTextTokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    # Workers are the parallelism; the Rust tokenizer's own threads would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = SpeechTextTokenizer.load(tokenizer_dir)


def _run_chunk(config: PreprocessConfig, chunk: Chunk) -> tuple[int, ShardStats]:
    return chunk.index, process_chunk(config, chunk, _worker_tokenizer)


def _job_fingerprint(config: PreprocessConfig, tokenizer: SpeechTextTokenizer) -> str:
    inputs = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in config.inputs]
    key = [inputs, config.layout, config.field, config.on_error, config.chunk_bytes, tokenizer.fingerprint()]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def preprocess(config: PreprocessConfig) -> dict:
    """Run (or finish) the job; returns its statistics. Raises ``CorpusError`` on a bad record
    unless ``on_error='skip'``, leaving complete shards for the rerun."""
    tokenizer = SpeechTextTokenizer.load(config.tokenizer)
    job = _job_fingerprint(config, tokenizer)
    prefix = config.output_prefix
    try:
        meta = indexed.read_metadata(prefix)
        if meta.get("job_fingerprint") == job and Path(f"{prefix}.bin").exists():
            return meta["stats"]  # already complete: a rerun does nothing
    except FileNotFoundError:
        pass
    chunks = plan_chunks(config.inputs, config.chunk_bytes)
    shards_dir = Path(f"{prefix}.shards")
    job_file = shards_dir / "job.json"
    if job_file.exists() and json.loads(job_file.read_text()).get("job") != job:
        shutil.rmtree(shards_dir)  # shards of other inputs or settings: not ours to reuse
    shards_dir.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps({"job": job}))

    results: dict[int, ShardStats] = {}
    started = time.perf_counter()
    bar = tqdm(total=len(chunks), desc=f"preprocess {Path(prefix).name}", unit="chunk")

    def record(index: int, stats: ShardStats) -> None:
        results[index] = stats
        docs = sum(s.documents for s in results.values())
        tokens = sum(s.tokens for s in results.values())
        elapsed = max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"{docs / elapsed:,.0f} docs/s, {tokens / elapsed:,.0f} tokens/s")
        bar.update()

    if config.workers <= 1:
        for chunk in chunks:
            record(chunk.index, process_chunk(config, chunk, tokenizer))
    else:
        with ProcessPoolExecutor(
            config.workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(config.tokenizer,)
        ) as pool:
            futures = [pool.submit(_run_chunk, config, chunk) for chunk in chunks]
            try:
                for future in as_completed(futures):
                    record(*future.result())
            except BrokenProcessPool:
                raise RuntimeError(
                    f"a preprocessing worker died; rerun the same command to resume ({len(results)} of "
                    f"{len(chunks)} chunks are complete and will be kept)"
                ) from None
    bar.close()
    elapsed = time.perf_counter() - started
    stats = _merge(config, chunks, results, tokenizer, job, elapsed)
    shutil.rmtree(shards_dir)
    return stats


def _merge(config, chunks, results, tokenizer, job: str, elapsed: float) -> dict:
    from megatron_speech import _C

    prefix = config.output_prefix
    dtype = indexed.token_dtype(tokenizer.vocab_size)
    lengths = []
    tmp_bin = Path(f"{prefix}.bin.tmp")
    with open(tmp_bin, "wb") as out:
        for chunk in chunks:
            paths = _shard_paths(config, chunk)
            lengths.append(indexed.read_sequence_lengths(paths["idx"]))
            with open(paths["bin"], "rb") as shard:
                shutil.copyfileobj(shard, out, 16 << 20)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
    tmp_idx = Path(f"{prefix}.idx.tmp")
    _C.write_index(str(tmp_idx), 8 if dtype == np.uint16 else 4, lengths, np.arange(len(lengths) + 1))
    errors = [e for i in sorted(results) for e in results[i].errors]
    stats = {
        "documents": int(len(lengths)),
        "tokens": int(lengths.sum()),
        "skipped": len(errors),
        "seconds": round(elapsed, 3),
    }
    report = Path(f"{prefix}.errors.jsonl")
    if errors:
        atomic.write_text(report, "".join(json.dumps(e) + "\n" for e in errors))
    else:
        report.unlink(missing_ok=True)
    indexed.metadata_path(prefix).unlink(missing_ok=True)
    os.replace(tmp_bin, f"{prefix}.bin")
    os.replace(tmp_idx, f"{prefix}.idx")
    indexed.write_metadata(prefix, {
        "layout": config.layout,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "sources": list(config.inputs),
        "num_tokens": stats["tokens"],
        "job_fingerprint": job,
        "stats": {k: v for k, v in stats.items() if k != "seconds"},
    })
    return stats

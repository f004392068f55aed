"""Corpora → Megatron indexed binaries, in parallel, resumable, and byte-reproducible.

A job of ``megatron_speech.jobs`` in the folder ``<prefix>.shards/``: each chunk of the inputs
becomes one shard ``parts/NNNNN.{bin,idx}``, complete once its marker is renamed in. Workers take
chunks in any order; the merge concatenates shards in chunk order. So:

- the output does not depend on the number of workers, and a rerun is byte-identical;
- a killed run loses at most the chunks in flight: a rerun skips complete shards and redoes partial
  ones; another job's shards are refused, not mixed in (``overwrite`` replaces them);
- the final ``.bin``/``.idx`` are renamed into place, and the metadata that marks the dataset
  complete is written last, so a reader never sees a truncated or inconsistent pair.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_speech import jobs
from megatron_speech.data import indexed, speech_tokens
from megatron_speech.data.corpus import CorpusError, EmptyCorpusError, read_records
from megatron_speech.data.layouts import LAYOUTS, SPEECH_TOKEN_LAYOUTS, check_voice_field, layout_ids, parse_record
from megatron_speech.lm_tokenizer import AudioSegment, Segment, SpeechTextTokenizer


@dataclass
class PreprocessConfig:
    inputs: list[str]
    output_prefix: str
    tokenizer: str  # directory written by SpeechTextTokenizer.save
    layout: str = "text"
    field: str = "text"
    voice_field: str | None = None  # tts only: the field naming each record's voice (layouts.voice_text)
    workers: int = 1
    on_error: str = "stop"  # stop | skip
    chunk_bytes: int = 64 << 20
    batch_documents: int = 1024
    backend: str = "cpp"  # cpp | python (the reference: Python layout + Megatron's builder)
    overwrite: bool = False  # replace another job's shards at this prefix instead of refusing

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {self.on_error!r}")
        if self.backend not in ("cpp", "python"):
            raise ValueError(f"backend must be 'cpp' or 'python', got {self.backend!r}")
        if not self.inputs:
            raise ValueError("no input files")
        check_voice_field(self.layout, self.voice_field)
        if self.chunk_bytes < 1 or self.batch_documents < 1 or self.workers < 1:
            raise ValueError("chunk_bytes, batch_documents and workers must be positive")


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


def _documents(config: PreprocessConfig, chunk: jobs.Chunk, codebook_size: int, errors: list[dict]) -> Iterator[list[Segment]]:
    skip = config.on_error == "skip"
    for number, record in read_records(chunk.path, chunk.start, chunk.end, strict=not skip):
        try:
            yield parse_record(config.layout, record, codebook_size, chunk.path, number, config.field,
                               config.voice_field)
        except CorpusError as exc:
            if not skip:
                raise
            errors.append(jobs.error_record(exc))


def _write_shard(config: PreprocessConfig, chunk: jobs.Chunk, tokenizer: SpeechTextTokenizer,
                 tmp: dict[str, Path]) -> dict:
    """One chunk's shard at the temporary paths ``tmp``; returns its stats."""
    writer_cls = _CppShardWriter if config.backend == "cpp" else _PythonShardWriter
    writer = writer_cls(str(tmp["bin"]), tokenizer)
    documents, errors = 0, []
    batch: list[list[Segment]] = []
    for doc in _documents(config, chunk, tokenizer.codebook_size, errors):
        batch.append(doc)
        if len(batch) == config.batch_documents:
            writer.add(batch)
            documents += len(batch)
            batch = []
        jobs.maybe_crash(documents + len(batch))
    writer.add(batch)
    documents += len(batch)
    tokens = writer.finalize(str(tmp["idx"]))
    return {"documents": documents, "tokens": tokens, "errors": errors}


def process_chunk(config: PreprocessConfig, job: jobs.Job, tokenizer: SpeechTextTokenizer, chunk: jobs.Chunk) -> dict:
    """Write one chunk's shard; returns its stats. A no-op if the shard is already complete."""
    return job.run_chunk(chunk, ("bin", "idx"), functools.partial(_write_shard, config, chunk, tokenizer))


# ---- the whole job -----------------------------------------------------------------------------

_worker_tokenizer: SpeechTextTokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    # Workers are the parallelism; the Rust tokenizer's own threads would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = SpeechTextTokenizer.load(tokenizer_dir)


def _run_chunk(config: PreprocessConfig, job: jobs.Job, chunk: jobs.Chunk) -> dict:
    return process_chunk(config, job, _worker_tokenizer, chunk)


def _job_fingerprint(config: PreprocessConfig, tokenizer: SpeechTextTokenizer) -> str:
    # Not on_error: a complete chunk has the same bytes either way (under "stop" a bad record stops
    # its chunk before the marker), so a rerun with --on-error skip after a stop keeps the shards.
    return jobs.fingerprint([jobs.input_signature(config.inputs), config.layout, config.field, config.chunk_bytes,
                             tokenizer.fingerprint(), *([config.voice_field] if config.voice_field else [])])


def _job(config: PreprocessConfig, tokenizer: SpeechTextTokenizer) -> jobs.Job:
    return jobs.Job(f"{config.output_prefix}.shards", "preprocessing", _job_fingerprint(config, tokenizer),
                    {"inputs": list(config.inputs), "chunk_bytes": config.chunk_bytes})


def _throughput(total: dict, elapsed: float) -> str:
    return f"{total.get('documents', 0) / elapsed:,.0f} docs/s, {total.get('tokens', 0) / elapsed:,.0f} tokens/s"


def preprocess(config: PreprocessConfig) -> dict:
    """Run (or finish) the job; returns its statistics. Raises ``CorpusError`` on a bad record
    unless ``on_error='skip'``, leaving complete shards for the rerun; ``jobs.JobError`` when
    another job's shards are at this prefix or another process is running this job."""
    tokenizer = SpeechTextTokenizer.load(config.tokenizer)
    speech_tokenizers = _check_speech_tokens(config, tokenizer)
    job = _job(config, tokenizer)
    prefix = config.output_prefix
    try:
        meta = indexed.read_metadata(prefix)
        if meta.get("job_fingerprint") == job.fingerprint and Path(f"{prefix}.bin").exists():
            return meta["stats"]  # already complete: a rerun does nothing
    except FileNotFoundError:
        pass
    chunks = jobs.plan_chunks(config.inputs, config.chunk_bytes)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    job.claim(config.overwrite)
    started = time.perf_counter()
    with job.lock("shard-0-of-1"):
        desc = f"preprocess {Path(prefix).name}"
        if config.workers <= 1:
            results = jobs.execute(chunks, functools.partial(process_chunk, config, job, tokenizer), desc=desc,
                                   postfix=_throughput)
        else:
            results = jobs.execute(chunks, functools.partial(_run_chunk, config, job), desc=desc, postfix=_throughput,
                                   workers=config.workers, initializer=_init_worker, initargs=(config.tokenizer,))
        stats = _merge(config, job, chunks, results, tokenizer, time.perf_counter() - started, speech_tokenizers)
    shutil.rmtree(job.folder)
    return stats


def _check_speech_tokens(config: PreprocessConfig, tokenizer: SpeechTextTokenizer) -> list[dict]:
    """Contract 2: speech-token inputs whose recorded tokenizer has another codebook size than the
    LM tokenizer's are refused before anything is written; the records go into the metadata."""
    if config.layout not in SPEECH_TOKEN_LAYOUTS:
        return []
    infos = [speech_tokens.check_codebook(path, tokenizer.codebook_size, f"the LM tokenizer {config.tokenizer}")
             for path in config.inputs]
    return [info for info in infos if info is not None]


def _merge(config: PreprocessConfig, job: jobs.Job, chunks: list[jobs.Chunk], results: dict[int, dict],
           tokenizer: SpeechTextTokenizer, elapsed: float, speech_tokenizers: list[dict]) -> dict:
    from megatron_speech import _C

    prefix = config.output_prefix
    total = jobs.sum_stats(results[i] for i in sorted(results))
    errors = total["errors"]
    jobs.write_error_report(f"{prefix}.errors.jsonl", errors)
    if not total.get("documents"):  # megatron-core cannot open an empty dataset: say so now
        skipped = f"; {len(errors)} bad records skipped, listed in {prefix}.errors.jsonl" if errors else ""
        raise EmptyCorpusError(f"{', '.join(config.inputs)}: no documents to write to {prefix}.bin{skipped}")
    dtype = indexed.token_dtype(tokenizer.vocab_size)
    lengths = []
    tmp_bin = Path(f"{prefix}.bin.{os.getpid()}.tmp")
    with open(tmp_bin, "wb") as out:
        for chunk in chunks:
            lengths.append(indexed.read_sequence_lengths(job.part(chunk, "idx")))
            with open(job.part(chunk, "bin"), "rb") as shard:
                shutil.copyfileobj(shard, out, 16 << 20)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
    tmp_idx = Path(f"{prefix}.idx.{os.getpid()}.tmp")
    _C.write_index(str(tmp_idx), 8 if dtype == np.uint16 else 4, lengths, np.arange(len(lengths) + 1))
    stats = {
        "documents": int(len(lengths)),
        "tokens": int(lengths.sum()),
        "skipped": len(errors),
        "seconds": round(elapsed, 3),
    }
    indexed.metadata_path(prefix).unlink(missing_ok=True)
    os.replace(tmp_bin, f"{prefix}.bin")
    os.replace(tmp_idx, f"{prefix}.idx")
    indexed.write_metadata(prefix, {
        "layout": config.layout,
        "voice_field": config.voice_field,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "sources": list(config.inputs),
        "speech_tokenizers": speech_tokenizers,
        "num_tokens": stats["tokens"],
        "job_fingerprint": job.fingerprint,
        "stats": {k: v for k, v in stats.items() if k != "seconds"},
    })
    return stats

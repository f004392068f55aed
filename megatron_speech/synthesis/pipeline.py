"""Text corpus → interleaved speech-text records, sharded over a cluster, resumable, reproducible.

A job of ``megatron_speech.jobs`` (the same chunks, shards, locks and markers as preprocessing):
each chunk becomes ``parts/NNNNN.jsonl`` (interleaved records, contract 4), complete once its
``parts/NNNNN.stats.json`` marker has been renamed into place. So:

- any number of shards (a Slurm array) covers the corpus exactly once, each document once;
- two processes on one shard are refused, and another job's output folder is too;
- a rerun skips complete chunks and redoes an interrupted one from its start; the output is
  byte-identical to an uninterrupted run's, because spans and sampling seeds depend only on
  (seed, document id), and batches only on the chunk's contents;
- ``finalize`` (after every shard) checks that all chunks are complete, sums the statistics, and
  optionally builds Megatron indexed binaries from the parts with the preprocessing builder.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_speech import atomic, jobs
from megatron_speech.config_loader import build
from megatron_speech.data.corpus import CorpusError, read_records, text_field
from megatron_speech.data.preprocess import PreprocessConfig, preprocess
from megatron_speech.jobs import Chunk
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.synthesis.generate import GenerationConfig, SpanGenerator
from megatron_speech.synthesis.spans import SpanConfig, sample_spans, split_document, word_offsets

STATS_FILE = "stats.json"


@dataclass
class SynthesisConfig:
    inputs: list[str]  # text corpus files: jsonl, jsonl.gz, parquet
    output_dir: str
    checkpoint: str  # the text-to-token model's training checkpoint root
    tokenizer: str  # its speech-text tokenizer directory
    checkpoint_step: int | None = None  # default: the newest
    text_field: str = "text"
    id_field: str = "id"  # a record without it is named "<file name>:<line>"
    spans: SpanConfig = field(default_factory=SpanConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    chunk_bytes: int = 8 << 20
    documents_per_batch: int = 256  # documents whose spans are generated together
    on_error: str = "stop"  # stop | skip: what a malformed record does (as in preprocessing)
    indexed_prefix: str | None = None  # finalize also writes <prefix>.bin/.idx (layout interleaved)
    indexed_tokenizer: str | None = None  # the pre-training LM's tokenizer for those (default: tokenizer)
    overwrite: bool = False  # replace another job's output in output_dir instead of refusing

    def __post_init__(self) -> None:
        if self.on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {self.on_error!r}")
        if not self.inputs:
            raise ValueError("no input files")
        if isinstance(self.spans, dict):
            self.spans = SpanConfig(**self.spans)
        if isinstance(self.generation, dict):
            self.generation = GenerationConfig(**self.generation)

    @classmethod
    def from_dict(cls, values: dict) -> "SynthesisConfig":
        return build(cls, values)

    def fingerprint(self) -> str:
        """What the output depends on: a rerun with another value must not mix its parts in."""
        latest = Path(self.checkpoint) / "latest"
        step = str(self.checkpoint_step or (latest.read_text().strip() if latest.exists() else ""))
        # Not on_error: under "stop" a bad record stops its chunk before the marker (see preprocessing).
        return jobs.fingerprint([jobs.input_signature(self.inputs), self.text_field, self.id_field, asdict(self.spans),
                                 self.generation.signature(), self.chunk_bytes, self.documents_per_batch,
                                 str(Path(self.checkpoint).resolve()), step,
                                 SpeechTextTokenizer.load(self.tokenizer).fingerprint(), self.indexed_tokenizer])

    def job(self) -> jobs.Job:
        return jobs.Job(self.output_dir, "synthesis", self.fingerprint(),
                        {"inputs": self.inputs, "chunk_bytes": self.chunk_bytes})


@dataclass
class ChunkStats:
    documents: int = 0
    words: int = 0
    speech_words: int = 0  # words of accepted spans
    spans: int = 0  # spans sampled
    rejected: int = 0  # spans left as text after every attempt
    attempts: int = 0  # decoding attempts over all spans
    speech_tokens: int = 0
    text_tokens: int = 0  # in the pre-training tokenizer (indexed_tokenizer), else the model's
    seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)

    def add(self, other: "ChunkStats") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "errors"}
        out["skipped_records"] = len(self.errors)
        out["eta"] = round(self.speech_words / self.words, 4) if self.words else 0.0
        out["speech_tokens_per_s"] = round(self.speech_tokens / self.seconds, 1) if self.seconds else 0.0
        return out


def _document_id(record: dict, id_field: str, path: str, number: int) -> str:
    value = record.get(id_field) if isinstance(record, dict) else None
    if value is None:
        return f"{Path(path).name}:{number}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(path, number, f"field {id_field!r} is {type(value).__name__}, not a string or integer")
    return str(value)


def span_seed(seed: int, document_id: str, span: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{document_id}\0{span}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


class Synthesizer:
    """One process's synthesis: the model, the tokenizer and the job's settings."""

    def __init__(self, config: SynthesisConfig, generator: SpanGenerator) -> None:
        self.config = config
        self.generator = generator
        # Text tokens are counted in the pre-training LM's vocabulary, where they will be trained on.
        self.text_tokenizer = SpeechTextTokenizer.load(config.indexed_tokenizer or config.tokenizer)
        self.documents_done = 0  # in this process, for the crash test hook

    # ---- documents --------------------------------------------------------------------------

    def _documents(self, chunk: Chunk, stats: ChunkStats):
        skip = self.config.on_error == "skip"
        for number, record in read_records(chunk.path, chunk.start, chunk.end, strict=not skip):
            try:
                if isinstance(record, CorpusError):
                    raise record
                text = text_field(record, self.config.text_field, chunk.path, number)
                yield _document_id(record, self.config.id_field, chunk.path, number), text
            except CorpusError as exc:
                if not skip:
                    raise
                stats.errors.append(jobs.error_record(exc))

    def interleave(self, documents: list[tuple[str, str]], stats: ChunkStats) -> list[dict]:
        """Interleaved records for (id, text) documents; spans of all of them decoded together."""
        pieces = []
        requests, seeds = [], []
        for doc_id, text in documents:
            spans = sample_spans(text, doc_id, self.config.spans)
            doc_pieces = split_document(text, spans)
            pieces.append(doc_pieces)
            for k, piece in enumerate(p for p in doc_pieces if p.speech):
                requests.append(piece.text)
                seeds.append(span_seed(self.config.spans.seed, doc_id, k))
            stats.words += len(word_offsets(text))
            stats.spans += len(spans)
        results = iter(self.generator.generate(requests, seeds))
        records = [{"id": doc_id, "segments": self._segments(doc_pieces, results, stats)}
                   for (doc_id, _), doc_pieces in zip(documents, pieces)]
        stats.documents += len(documents)
        return records

    def _segments(self, pieces, results, stats: ChunkStats) -> list[dict]:
        """One document's segments: its text pieces, and each speech piece as audio (or as text
        again when its span was rejected); adjacent text joined."""
        segments: list[dict] = []
        for piece in pieces:
            if not piece.speech:
                _append_text(segments, piece.text)
                continue
            result = next(results)
            stats.attempts += result.attempts
            if result.codes is None:
                stats.rejected += 1
                _append_text(segments, piece.text)
            else:
                segments.append({"audio": list(result.codes)})
                stats.speech_words += len(word_offsets(piece.text))
                stats.speech_tokens += len(result.codes)
        texts = [s["text"] for s in segments if "text" in s]
        stats.text_tokens += sum(map(len, self.text_tokenizer.tokenize_batch(texts))) if texts else 0
        return segments

    # ---- one chunk --------------------------------------------------------------------------

    def run_chunk(self, job: jobs.Job, chunk: Chunk) -> ChunkStats:
        """Write one chunk's part; a no-op returning its stats when it is already complete."""
        return ChunkStats(**job.run_chunk(chunk, ("jsonl",), lambda tmp: asdict(self._write_part(chunk, tmp["jsonl"]))))

    def _write_part(self, chunk: Chunk, path: Path) -> ChunkStats:
        stats = ChunkStats()
        started = time.perf_counter()
        with open(path, "w", encoding="utf-8") as out:
            batch: list[tuple[str, str]] = []
            for document in self._documents(chunk, stats):
                batch.append(document)
                if len(batch) == self.config.documents_per_batch:
                    self._write(out, self.interleave(batch, stats))
                    self.documents_done += len(batch)
                    batch = []
                    out.flush()
                jobs.maybe_crash(self.documents_done)
            self._write(out, self.interleave(batch, stats) if batch else [])
        stats.seconds = round(time.perf_counter() - started, 3)
        return stats

    @staticmethod
    def _write(out, records: list[dict]) -> None:
        out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _append_text(segments: list[dict], text: str) -> None:
    if not text:
        return
    if segments and "text" in segments[-1]:
        segments[-1]["text"] += text
    else:
        segments.append({"text": text})


# ---- jobs ------------------------------------------------------------------------------------


def load_generator(config: SynthesisConfig) -> SpanGenerator:
    """The text-to-token model from its checkpoint, in this process (initialises a one-rank group)."""
    import torch

    from megatron_speech import parallel as par
    from megatron_speech.checkpoints.trained import load_trained_model

    tokenizer = SpeechTextTokenizer.load(config.tokenizer)
    if not torch.distributed.is_initialized():
        par.init_distributed(par.ParallelConfig())
    model, _, _ = load_trained_model(config.checkpoint, tokenizer, config.checkpoint_step)
    return SpanGenerator(model, tokenizer, config.generation)


def run_shard(config: SynthesisConfig, shard_index: int = 0, num_shards: int = 1,
              generator: SpanGenerator | None = None) -> dict:
    """Synthesize this shard's chunks (skipping complete ones); returns the shard's summary."""
    job = config.job()
    job.claim(config.overwrite)
    chunks = jobs.shard_chunks(jobs.plan_chunks(config.inputs, config.chunk_bytes), shard_index, num_shards)
    with job.lock(f"shard-{shard_index}-of-{num_shards}"):
        synthesizer = Synthesizer(config, generator or load_generator(config))
        results = jobs.execute(chunks, lambda chunk: asdict(synthesizer.run_chunk(job, chunk)),
                               desc=f"synthesize shard {shard_index}/{num_shards}", postfix=_progress)
    return _total(results.values()).summary()


def _total(stats) -> ChunkStats:
    total = ChunkStats()
    for one in stats:
        total.add(ChunkStats(**one))
    return total


def _progress(total: dict, elapsed: float) -> str:
    summary = _total([total]).summary()
    return (f"{summary['documents']:,} docs, eta {summary['eta']:.3f}, "
            f"{summary['speech_tokens_per_s']:,.0f} speech tok/s, {summary['rejected']} rejected")


def finalize(config: SynthesisConfig) -> dict:
    """After every shard: check completeness, write ``stats.json``, build indexed binaries if asked."""
    job = config.job()
    if job.recorded_fingerprint() not in (None, job.fingerprint):
        job.claim()  # refuses another job's folder, naming both fingerprints
    chunks = jobs.plan_chunks(config.inputs, config.chunk_bytes)
    job.require_complete(chunks)
    total = _total(job.stats(c) for c in chunks)
    summary = {**total.summary(), "chunks": len(chunks), "errors": total.errors}
    if config.indexed_prefix:
        summary["indexed"] = preprocess(PreprocessConfig(
            inputs=[str(job.part(c, "jsonl")) for c in chunks],
            output_prefix=config.indexed_prefix, tokenizer=config.indexed_tokenizer or config.tokenizer,
            layout="interleaved", overwrite=config.overwrite))
    atomic.write_json(Path(config.output_dir) / STATS_FILE, summary)
    return summary

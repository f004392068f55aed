"""Manifest of speech -> jsonl of ``{id, text, speech_tokens}``: the preprocessing tool's input.

Contract 2 (``data.speech_tokens``): the tokenizer that made the codes is recorded beside the output
(``<output>.speech_tokenizer.json``), written before the output is renamed into place.

A job of ``megatron_speech.jobs`` in the folder ``<output>.shards/``, like preprocessing and
synthesis: the manifest is cut into chunks, each chunk's utterances are tokenized in batches into
``parts/NNNNN.jsonl``, and when every chunk is complete the parts are joined in order into
``<output>`` (renamed into place, so a rerun of a finished job does nothing). A killed run redoes
only the chunk in flight; another job's folder is refused; shards (``shard_index``/``num_shards``,
or a Slurm array) split the work, and the shard that finds every chunk complete writes the output.

Strict about audio: a missing, empty, corrupt or wrong-rate file stops the run with the manifest
line and file named, or with ``on_error="skip"`` is left out and listed in
``<output>.errors.jsonl`` (the error record of every job: file, record, reason).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from megatron_speech import jobs
from megatron_speech.data import speech_tokens
from megatron_speech.data.corpus import CorpusError, read_records
from megatron_speech.speech.audio import load_audio, pad_batch
from megatron_speech.speech_tokenizer import load


@dataclass
class TokenizeConfig:
    manifest: str
    output: str
    model: str  # a .nemo file of either speech tokenizer (speech_tokenizer.load)
    batch_size: int = 16
    on_error: str = "stop"  # stop | skip
    chunk_bytes: int = 1 << 20  # of manifest: about 7,000 utterances a chunk
    shard_index: int = 0
    num_shards: int = 1
    overwrite: bool = False  # replace another job's parts instead of refusing

    def __post_init__(self) -> None:
        if self.on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {self.on_error!r}")

    def job(self) -> jobs.Job:
        model = Path(self.model)
        model_key = (str(model.resolve()), model.stat().st_size, model.stat().st_mtime_ns) if model.exists() else self.model
        key = [jobs.input_signature([self.manifest]), model_key, self.chunk_bytes]
        return jobs.Job(f"{self.output}.shards", "speech tokenizing", jobs.fingerprint(key),
                        {"inputs": [self.manifest], "chunk_bytes": self.chunk_bytes})


def _tokenize_chunk(config: TokenizeConfig, model, chunk: jobs.Chunk, tmp: dict[str, Path]) -> dict:
    """One chunk of the manifest into speech-token records at ``tmp["jsonl"]``; returns its stats."""
    manifest = Path(config.manifest)
    written, errors = 0, []
    batch: list[tuple[dict, object]] = []  # (manifest line, audio)
    with open(tmp["jsonl"], "w") as out:
        for number, line in read_records(manifest, chunk.start, chunk.end, strict=config.on_error == "stop"):
            try:
                if isinstance(line, CorpusError):
                    raise line
                if not isinstance(line, dict) or "audio_filepath" not in line:
                    raise CorpusError(manifest, number, "missing field 'audio_filepath'")
                batch.append((line, load_audio(manifest, number, line, model.cfg.sample_rate)))
            except CorpusError as exc:
                if config.on_error == "stop":
                    raise
                errors.append(jobs.error_record(exc))
            if len(batch) == config.batch_size:
                written += _write_batch(out, model, batch)
                batch = []
            jobs.maybe_crash(written + len(batch) + len(errors))
        written += _write_batch(out, model, batch)
    return {"written": written, "skipped": len(errors), "errors": errors}


def _write_batch(out, model, batch: list[tuple[dict, object]]) -> int:
    if not batch:
        return 0
    codes = model.tokenize(*pad_batch([audio for _, audio in batch]))
    for (line, _), tokens in zip(batch, codes):
        record = {"id": line.get("id", line["audio_filepath"]), "text": line.get("text", ""),
                  speech_tokens.SPEECH_FIELD: tokens}
        if "speaker" in line:  # the voice, for a voice-conditioned text-to-token model
            record["speaker"] = line["speaker"]
        out.write(json.dumps(record) + "\n")
    return len(batch)


def tokenize_manifest(config: TokenizeConfig, model=None, info: dict | None = None) -> dict:
    """Run (or finish) this shard of the job; returns counts. ``model`` may be passed in (tests),
    else it is restored from ``config.model`` when there is work to do; ``info``, the record of the
    tokenizer written beside the output, is by default ``load.describe`` of ``config.model``."""
    output = Path(config.output)
    if output.exists():
        return {"written": sum(1 for _ in output.open()), "skipped": 0, "already_done": True}
    job = config.job()
    job.claim(config.overwrite)
    chunks = jobs.plan_chunks([config.manifest], config.chunk_bytes)
    mine = jobs.shard_chunks(chunks, config.shard_index, config.num_shards)
    with job.lock(f"shard-{config.shard_index}-of-{config.num_shards}"):
        if job.missing(mine):
            model = (model or load.load_speech_tokenizer(config.model)).eval()

        def run_one(chunk: jobs.Chunk) -> dict:
            return job.run_chunk(chunk, ("jsonl",), lambda tmp: _tokenize_chunk(config, model, chunk, tmp))

        results = jobs.execute(mine, run_one, desc="tokenize speech", postfix=_progress)
    total = jobs.sum_stats(results.values())
    summary = {"written": total.get("written", 0), "skipped": total.get("skipped", 0), "already_done": False,
               "chunks_done_now": len(mine)}
    if not job.missing(chunks):
        def describe() -> dict:
            return info or load.describe(config.model, model or load.load_speech_tokenizer(config.model))

        _join(job, chunks, output, describe)
    return summary


def _progress(total: dict, elapsed: float) -> str:
    return f"{total.get('written', 0) / elapsed:,.1f} utt/s, {total.get('skipped', 0)} skipped"


def _join(job: jobs.Job, chunks: list[jobs.Chunk], output: Path, describe) -> None:
    """Every chunk is complete: the parts in order become ``output``, errors ``<output>.errors.jsonl``,
    and ``describe()`` (the tokenizer's record) ``<output>.speech_tokenizer.json``."""
    with job.lock("join"):
        if output.exists():
            return
        speech_tokens.write_info(output, describe())
        jobs.join_parts(job, chunks, output)
    shutil.rmtree(job.folder)

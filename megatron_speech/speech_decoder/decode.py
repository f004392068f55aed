"""Speech-token jsonl -> wav files and a speech manifest: the job behind ``tools/decode_speech.py``.

A ``megatron_speech.jobs`` job, like tokenizing: the token file is cut into chunks; a chunk's records
are decoded in batches (token-to-mel model, then the vocoder) into ``<output>/wav/<id>.wav`` and a
part manifest; when every chunk is complete the parts become ``<output>/manifest.jsonl`` (contract
1: ``id``, ``audio_filepath``, ``duration``, ``text``, ``speaker``), so the decoded audio can be
tokenized, judged or listened to like any corpus. A killed run redoes only the chunk in flight; a
finished one does nothing. A bad record (unreadable, no tokens, a code outside the codebook) stops
the run naming the file and line, or with ``on_error="skip"`` is listed in
``<output>/manifest.jsonl.errors.jsonl``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_speech import jobs
from megatron_speech.data.corpus import CorpusError, read_records
from megatron_speech.data.speech_tokens import SPEECH_FIELD
from megatron_speech.speech.audio import write_wav
from megatron_speech.speech_decoder.vocoder import GRIFFIN_LIM, load_vocoder


@dataclass
class DecodeConfig:
    tokens: str
    output: str  # a folder: wav/, manifest.jsonl
    model: str  # the token-to-mel .nemo
    speaker: str | None = None  # a training voice; default: the record's "speaker", else the first voice
    vocoder: str = GRIFFIN_LIM  # or a HiFi-GAN .nemo trained on the same frames (vocoder.py)
    griffin_lim_iterations: int = 32
    flow_steps: int | None = None  # default: the model's
    batch_size: int = 16
    on_error: str = "stop"
    chunk_bytes: int = 1 << 20
    shard_index: int = 0
    num_shards: int = 1
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {self.on_error!r}")
        if self.vocoder != GRIFFIN_LIM and not self.vocoder.endswith(".nemo"):
            raise ValueError(f"vocoder must be {GRIFFIN_LIM!r} or a HiFi-GAN .nemo file, got {self.vocoder!r}")

    @property
    def manifest(self) -> Path:
        return Path(self.output) / "manifest.jsonl"

    def job(self) -> jobs.Job:
        key = [jobs.input_signature([self.tokens]), file_key(self.model), self.speaker, file_key(self.vocoder),
               self.griffin_lim_iterations, self.flow_steps, self.chunk_bytes]
        return jobs.Job(Path(self.output) / "job", "speech decoding", jobs.fingerprint(key),
                        {"inputs": [self.tokens], "chunk_bytes": self.chunk_bytes})


def file_key(name: str) -> object:
    """A model file as a job's key: a retrained model is another job."""
    path = Path(name)
    return (str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else name


def wav_name(record_id: str) -> str:
    """A file name for an id: ids are free text, file names are not."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", record_id)[:200] + ".wav"


def _checked(path: Path, number: int, record: object, codebook_size: int) -> dict:
    if not isinstance(record, dict) or not isinstance(record.get(SPEECH_FIELD), list) or not record[SPEECH_FIELD]:
        raise CorpusError(path, number, f"a speech-token record needs a non-empty '{SPEECH_FIELD}' list")
    codes = record[SPEECH_FIELD]
    bad = next((c for c in codes if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < codebook_size), None)
    if bad is not None:
        raise CorpusError(path, number, f"speech token {bad!r} is not a code of this decoder (0..{codebook_size - 1})")
    return record


def _decode_chunk(config: DecodeConfig, model, vocoder, chunk: jobs.Chunk, tmp: dict[str, Path]) -> dict:
    tokens = Path(config.tokens)
    written, seconds, compute, errors, batch = 0, 0.0, 0.0, [], []
    codebook = model.net_settings.codebook_size
    with open(tmp["jsonl"], "w") as out:
        for number, record in read_records(tokens, chunk.start, chunk.end, strict=config.on_error == "stop"):
            try:
                if isinstance(record, CorpusError):
                    raise record
                batch.append((number, _checked(tokens, number, record, codebook)))
            except CorpusError as exc:
                if config.on_error == "stop":
                    raise
                errors.append(jobs.error_record(exc))
            if len(batch) == config.batch_size:
                done = _write_batch(config, model, vocoder, batch, out)
                written, seconds, compute, batch = written + done[0], seconds + done[1], compute + done[2], []
            jobs.maybe_crash(written + len(batch) + len(errors))
        done = _write_batch(config, model, vocoder, batch, out)
    return {"written": written + done[0], "audio_seconds": seconds + done[1], "compute_seconds": compute + done[2],
            "skipped": len(errors), "errors": errors}


def _write_batch(config: DecodeConfig, model, vocoder, batch: list[tuple[int, dict]], out) -> tuple[int, float, float]:
    """(records, seconds of audio, seconds of compute) of one batch, its wavs written."""
    if not batch:
        return 0, 0.0, 0.0
    began = time.perf_counter()
    speakers = [model.speaker_id(config.speaker or r.get("speaker")) for _, r in batch]
    mels = model.decode([r[SPEECH_FIELD] for _, r in batch], speakers, config.flow_steps)
    rate, seconds = model.mel_settings.sample_rate, 0.0
    for (number, record), mel, speaker in zip(batch, mels, speakers):
        audio = vocoder(mel)
        name = wav_name(str(record.get("id") or f"line{number}"))
        write_wav(Path(config.output) / "wav" / name, np.round(audio * 32767).astype(np.int16), rate)
        seconds += len(audio) / rate
        out.write(json.dumps({"id": record.get("id"), "audio_filepath": f"wav/{name}",
                              "duration": round(len(audio) / rate, 4), "text": record.get("text", ""),
                              "speaker": model.cfg.speakers[speaker]}) + "\n")
    return len(batch), seconds, time.perf_counter() - began


def decode_tokens(config: DecodeConfig, model=None) -> dict:
    """Run (or finish) this shard; returns counts and the real-time factor (compute / audio seconds)."""
    if config.manifest.exists():
        return {"written": sum(1 for _ in config.manifest.open()), "skipped": 0, "already_done": True}
    job = config.job()
    job.claim(config.overwrite)
    chunks = jobs.plan_chunks([config.tokens], config.chunk_bytes)
    mine = jobs.shard_chunks(chunks, config.shard_index, config.num_shards)
    with job.lock(f"shard-{config.shard_index}-of-{config.num_shards}"):
        if job.missing(mine) and model is None:
            model = load_decoder(config.model)
        vocoder = load_vocoder(config.vocoder, model.mel_settings, config.griffin_lim_iterations) if model else None

        def run_one(chunk: jobs.Chunk) -> dict:
            return job.run_chunk(chunk, ("jsonl",), lambda tmp: _decode_chunk(config, model, vocoder, chunk, tmp))

        results = jobs.execute(mine, run_one, desc="decode speech", postfix=_progress)
    total = jobs.sum_stats(results.values())
    summary = {"written": total.get("written", 0), "skipped": total.get("skipped", 0), "already_done": False,
               "real_time_factor": total.get("compute_seconds", 0.0) / max(total.get("audio_seconds", 0.0), 1e-9)}
    if not job.missing(chunks):
        _join(job, chunks, config.manifest)
    return summary


def load_decoder(path: str):
    from megatron_speech.speech_decoder.model import SpeechDecoderModel

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such speech decoder (.nemo)")
    return SpeechDecoderModel.restore_from(str(path), map_location="cpu").eval()


def _progress(total: dict, elapsed: float) -> str:
    rtf = total.get("compute_seconds", 0.0) / max(total.get("audio_seconds", 0.0), 1e-9)
    return f"{total.get('written', 0) / elapsed:,.2f} utt/s, real-time factor {rtf:.2f}, {total.get('skipped', 0)} skipped"


def _join(job: jobs.Job, chunks: list[jobs.Chunk], manifest: Path) -> None:
    with job.lock("join"):
        if manifest.exists():
            return
        jobs.join_parts(job, chunks, manifest)
    shutil.rmtree(job.folder)

"""The one mechanism for every stage that writes many outputs: chunked, sharded, resumable jobs.

A job turns input files into per-chunk parts inside a job folder, in the shape datatrove made
familiar: an executor that skips completed tasks, and steps that only map records.

- **Chunks.** Inputs are cut into line-aligned byte ranges of plain jsonl (gz and parquet files
  whole); chunk ``c`` belongs to shard ``c % num_shards`` (also from Slurm array variables). The plan
  depends only on the inputs and ``chunk_bytes``, so any number of shards covers them exactly once.
- **The folder.** ``job.json`` holds the job's fingerprint (what its output depends on). A folder
  made by another job is refused with both fingerprints named; ``overwrite`` replaces it.
- **One writer.** Each shard, and each chunk while it is written, holds an exclusive ``flock``; a
  second process on the same shard or chunk is refused at once instead of writing beside the first.
- **Parts.** A chunk writes ``parts/NNNNN.<suffix>`` under per-process temporary names, renames them
  into place, and is complete once its marker ``parts/NNNNN.stats.json`` has been renamed in last.
  A rerun skips complete chunks and redoes a torn one from its start.
- **One error record** (``{"file", "record", "reason"}``, record = 1-based line or row) and **one
  stats format** (a flat dict of counts plus ``errors``), summed over chunks by ``sum_stats``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from megatron_speech import atomic
from megatron_speech.data.corpus import CorpusError, check_format, is_splittable

JOB_FILE = "job.json"
# Test hook: a process exits abruptly (code 17) once it has handled this many records (a killed job).
CRASH_AFTER_DOCS_ENV = "MEGATRON_SPEECH_CRASH_AFTER_DOCS"
CRASH_EXIT_CODE = 17


class JobError(RuntimeError):
    """A job that must not run as asked: another job's folder, a busy shard, missing chunks."""


# ---- chunks and shards -------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    index: int
    path: str
    start: int
    end: int | None  # None: to the end of the file


def plan_chunks(inputs: Sequence[str], chunk_bytes: int) -> list[Chunk]:
    """Line-aligned byte ranges of plain jsonl inputs; gz and parquet files are one chunk each."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
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


def shard_chunks(chunks: list[Chunk], shard_index: int, num_shards: int) -> list[Chunk]:
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} is outside [0, {num_shards})")
    return [c for c in chunks if c.index % num_shards == shard_index]


def shard_from_environment(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(index, count) of this Slurm array task, or (0, 1) outside an array."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" not in env:
        return 0, 1
    index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    return index, int(env["SLURM_ARRAY_TASK_COUNT"])


# ---- fingerprints ------------------------------------------------------------------------------


def input_signature(paths: Iterable[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of each input: an edited input is a different job."""
    return [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]


def fingerprint(key: Any) -> str:
    return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:16]


# ---- error records and stats -------------------------------------------------------------------


def error_record(exc: CorpusError) -> dict:
    """The one error-record format of every stage: the file, the 1-based record, the reason."""
    return {"file": exc.path, "record": exc.record, "reason": exc.reason}


def sum_stats(stats: Iterable[dict]) -> dict:
    """Counts added, ``errors`` concatenated in order; other fields (strings) keep the first value."""
    total: dict[str, Any] = {"errors": []}
    for one in stats:
        for key, value in one.items():
            if key == "errors":
                total["errors"].extend(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            else:
                total.setdefault(key, value)
    return total


def write_error_report(path: str | Path, errors: list[dict]) -> None:
    """``<output>.errors.jsonl`` with one error record a line; removed when there are none."""
    path = Path(path)
    if errors:
        atomic.write_text(path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
    else:
        path.unlink(missing_ok=True)


def join_parts(job: "Job", chunks: list[Chunk], output: Path, suffix: str = "jsonl") -> None:
    """Every chunk is complete: their ``suffix`` parts, in order, become ``output`` (renamed into
    place), and their errors ``<output>.errors.jsonl``. Call it holding the job's "join" lock."""
    tmp = output.with_name(f"{output.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        for chunk in chunks:
            with open(job.part(chunk, suffix), "rb") as part:
                shutil.copyfileobj(part, out, 16 << 20)
    write_error_report(f"{output}.errors.jsonl", sum_stats(job.stats(c) for c in chunks)["errors"])
    os.replace(tmp, output)


def maybe_crash(records_done: int) -> None:
    """The test hook: exit abruptly, as a killed job would, once ``records_done`` reaches the limit."""
    limit = int(os.environ.get(CRASH_AFTER_DOCS_ENV, "0"))
    if limit and records_done >= limit:
        sys.stdout.flush()
        os._exit(CRASH_EXIT_CODE)


# ---- one writer ---------------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive_lock(path: str | Path, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed), or raise ``JobError`` at once:
    ``"<busy> by another process (pid N); ..."``. The kernel drops the lock when its holder dies, so
    a killed job never leaves a stale lock behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise JobError(f"{busy} by another process (pid {holder}); wait for it to finish or stop it, "
                       f"then rerun") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux), so a ``kill -9`` of a job
    leaves no worker or writer behind to collide with the rerun."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


_fork_hook = {"installed": False, "from_main_thread": False}


def children_die_with_this_process() -> None:
    """Every process this one forks from its main thread from now on dies with it (megatron-core's
    checkpoint writers, say). Forks from other threads are left alone: the kernel's parent-death
    signal follows the forking *thread*, which may end long before the process does."""
    if _fork_hook["installed"]:
        return

    def before() -> None:
        _fork_hook["from_main_thread"] = threading.current_thread() is threading.main_thread()

    def after_in_child() -> None:
        if _fork_hook["from_main_thread"]:
            die_with_parent()

    os.register_at_fork(before=before, after_in_child=after_in_child)
    _fork_hook["installed"] = True


# ---- the job folder ----------------------------------------------------------------------------


class Job:
    """A job's folder: its fingerprint, its locks, and its chunks' parts and completion markers."""

    def __init__(self, folder: str | Path, kind: str, job_fingerprint: str, description: dict | None = None,
                 remedy: str = "use another output location, or --overwrite to replace it") -> None:
        self.folder = Path(folder)
        self.kind = kind  # "preprocessing", "synthesis", ...: named in messages
        self.fingerprint = job_fingerprint
        self.description = description or {}
        self.remedy = remedy  # what the refusal tells the user to do: the options of the calling tool

    # ---- claiming --------------------------------------------------------------------------

    def claim(self, overwrite: bool = False) -> None:
        """Make the folder this job's, or check that it already is; another job's is refused
        (or, with ``overwrite``, emptied first)."""
        found = self.recorded_fingerprint()
        if found is not None and found != self.fingerprint:
            if not overwrite:
                raise JobError(
                    f"{self.folder} holds the output of another {self.kind} job (fingerprint {found}, this "
                    f"job {self.fingerprint}: inputs, settings or model differ); {self.remedy}")
            self._empty()
        self.folder.mkdir(parents=True, exist_ok=True)
        if found != self.fingerprint or overwrite:
            self.record()

    def record(self) -> None:
        """Write this job's ``job.json`` through a rename, replacing any other: for a caller that has
        decided the folder's output stands under this job (``claim`` is the checked way)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.folder / JOB_FILE, {"fingerprint": self.fingerprint, "kind": self.kind,
                                                  **self.description})

    def recorded_fingerprint(self) -> str | None:
        path = self.folder / JOB_FILE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text()).get("fingerprint")
        except (json.JSONDecodeError, AttributeError):
            raise JobError(f"{path}: not a job file; is {self.folder} another program's folder?") from None

    def _empty(self) -> None:
        with contextlib.ExitStack() as held:  # every shard's and chunk's lock: nobody is writing there
            for lock in sorted((self.folder / "locks").glob("*.lock")):
                held.enter_context(exclusive_lock(lock, f"{self.folder}: {lock.stem} is being written"))
            for child in self.folder.iterdir():
                if child.name == "locks":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    # ---- locking ---------------------------------------------------------------------------

    def lock(self, name: str) -> contextlib.AbstractContextManager:
        """Hold ``locks/<name>.lock`` exclusively, or fail at once naming the process that holds it."""
        return exclusive_lock(self.folder / "locks" / f"{name}.lock", f"{self.folder}: {name} is being written")

    # ---- parts -----------------------------------------------------------------------------

    def part(self, chunk: Chunk, suffix: str) -> Path:
        return self.folder / "parts" / f"{chunk.index:05d}.{suffix}"

    def marker(self, chunk: Chunk) -> Path:
        return self.part(chunk, "stats.json")

    def stats(self, chunk: Chunk) -> dict | None:
        """A complete chunk's stats, or None."""
        marker = self.marker(chunk)
        return json.loads(marker.read_text()) if marker.exists() else None

    def missing(self, chunks: Iterable[Chunk]) -> list[int]:
        return [c.index for c in chunks if not self.marker(c).exists()]

    def require_complete(self, chunks: list[Chunk]) -> None:
        missing = self.missing(chunks)
        if missing:
            raise JobError(f"{self.folder}: {len(missing)} of {len(chunks)} chunks are not complete "
                           f"(first: {missing[:5]}); rerun their shards first")

    def run_chunk(self, chunk: Chunk, suffixes: Sequence[str], produce: Callable[[dict[str, Path]], dict]) -> dict:
        """Run one chunk unless it is complete. ``produce`` writes each suffix's part to the
        temporary path it is given and returns the chunk's stats; the parts are renamed into place
        and the marker last, so a chunk is complete only when every part of it is."""
        done = self.stats(chunk)
        if done is not None:
            return done
        with self.lock(f"chunk-{chunk.index:05d}"):
            done = self.stats(chunk)  # finished by another process while we waited for nothing
            if done is not None:
                return done
            final = {s: self.part(chunk, s) for s in suffixes}
            tmp = {s: p.with_name(f"{p.name}.{os.getpid()}.tmp") for s, p in final.items()}
            final[suffixes[0]].parent.mkdir(parents=True, exist_ok=True)
            for torn in final[suffixes[0]].parent.glob(f"{chunk.index:05d}.*.tmp"):
                torn.unlink()  # a killed writer's; nobody else can be writing this chunk now
            stats = produce(tmp)
            for suffix in suffixes:
                os.replace(tmp[suffix], final[suffix])
            atomic.write_json(self.marker(chunk), stats)
        return stats


# ---- the executor ------------------------------------------------------------------------------


def _init_worker(initializer: Callable | None, initargs: tuple) -> None:
    die_with_parent()
    if initializer is not None:
        initializer(*initargs)


def execute(chunks: list[Chunk], run_one: Callable[[Chunk], dict], *, desc: str,
            postfix: Callable[[dict, float], str] | None = None, workers: int = 1,
            initializer: Callable | None = None, initargs: tuple = ()) -> dict[int, dict]:
    """Run ``run_one`` on every chunk (it skips complete ones itself), in this process or in
    ``workers`` spawned processes; returns each chunk's stats, with a progress bar and throughput."""
    results: dict[int, dict] = {}
    started = time.perf_counter()
    bar = tqdm(total=len(chunks), desc=desc, unit="chunk")

    def record(index: int, stats: dict) -> None:
        results[index] = stats
        if postfix:
            bar.set_postfix_str(postfix(sum_stats(results.values()), max(time.perf_counter() - started, 1e-9)))
        bar.update()

    if workers <= 1:
        for chunk in chunks:
            record(chunk.index, run_one(chunk))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(initializer, initargs)) as pool:
            futures = {pool.submit(run_one, chunk): chunk.index for chunk in chunks}
            try:
                for future in as_completed(futures):
                    record(futures[future], future.result())
            except BrokenProcessPool:
                raise JobError(f"a {desc} worker died; rerun the same command to resume ({len(results)} of "
                               f"{len(chunks)} chunks are complete and will be kept)") from None
    bar.close()
    return results

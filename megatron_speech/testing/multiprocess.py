"""Run a function in N local processes that form one gloo (or nccl) job.

Megatron's parallel layouts need real process groups; spawning them here lets a test compare
TP=2 or PP=2 against a single process in seconds, with no launcher.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from megatron_speech.parallel import free_port


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    try:
        result = fn(*args)
    except BaseException:
        Path(out_dir, f"error{rank}").write_text(traceback.format_exc())
        raise
    with open(Path(out_dir, f"result{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def run_processes(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Each rank's return value of ``fn(*args)``; a rank's traceback is re-raised here."""
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            mp.start_processes(
                _worker, args=(world_size, free_port(), out_dir, fn, args),
                nprocs=world_size, start_method="spawn",
            )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            errors = sorted(Path(out_dir).glob("error*"))
            detail = errors[0].read_text() if errors else str(exc)
            raise RuntimeError(f"a worker process failed:\n{detail}") from None
        results = []
        for rank in range(world_size):
            with open(Path(out_dir, f"result{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
        return results


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False

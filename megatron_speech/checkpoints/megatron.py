"""Training checkpoints through ``megatron.core.dist_checkpointing``.

Every rank writes its own shards of the model and optimizer into one directory a checkpoint, in
Megatron's layout-independent format, so a run saved at TP=2 resumes at TP=1 (or another PP) with the
same weights and optimizer moments. Beside the shards lies ``megatron_speech.json``: the step, the
tokenizer and model shape the weights belong to, and the layout that wrote them. It is read first, so a
foreign or broken checkpoint fails with a plain message before any training step.

Layout under the checkpoint root::

    iter_0000040/          one complete checkpoint (renamed into place when every rank is done)
    latest                 the step of the newest complete checkpoint (replaced atomically)

A crash while saving leaves only an ``iter_*.tmp`` directory, which is ignored and overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_speech import atomic, jobs
from megatron_speech.models.config import FUNCTION_FIELDS

METADATA = "megatron_speech.json"
LATEST = "latest"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: names the checkpoint and says why."""


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    metadata: dict[str, Any]


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def latest_step(root: str | Path) -> int | None:
    marker = Path(root) / LATEST
    if not marker.exists():
        return None
    text = marker.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{marker}: expected a step number, found {text[:40]!r}")
    return int(text)


def _layout() -> dict[str, int]:
    from megatron.core import parallel_state as ps

    return {
        "tensor_model_parallel_size": ps.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": ps.get_pipeline_model_parallel_world_size(),
        "data_parallel_size": ps.get_data_parallel_world_size(),
    }


def _rng_object():
    """This rank's RNG state as a ShardedObject, one per (pp, tp, dp) position."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    return ShardedObject(
        "rng_state",
        state,
        (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size(),
         ps.get_data_parallel_world_size()),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(),
         ps.get_data_parallel_rank()),
        replica_id=0,
    )


def _restore_rng(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _model_key(i: int, n: int) -> str:
    return f"model{i}" if n > 1 else "model"


def _sharded_state(model_chunks: list, optimizer, scheduler, is_loading: bool, with_rng: bool) -> dict:
    """What a checkpoint holds; without an optimizer, the weights alone."""
    state: dict[str, Any] = {}
    merged: dict[str, Any] = {}
    for i, chunk in enumerate(model_chunks):
        module = getattr(chunk, "module", chunk)  # unwrap DDP
        state[_model_key(i, len(model_chunks))] = part = module.sharded_state_dict()
        merged.update(part)
    if optimizer is not None:
        # For the distributed optimizer: store its state per parameter, so any TP/PP/DP reloads it.
        metadata = {"distrib_optim_sharding_type": "fully_reshardable"}
        state["optimizer"] = optimizer.sharded_state_dict(merged, is_loading=is_loading, metadata=metadata)
        state["opt_param_scheduler"] = scheduler.state_dict()
    if with_rng:
        state["rng_state"] = _rng_object()
    return state


def check_optimizer_supported(use_distributed_optimizer: bool) -> None:
    """megatron-core 0.16 restores a distributed optimizer only with Apex's or TE's fused Adam.

    On torch's Adam (machines without either), loading its state fails inside megatron-core (a
    per-parameter ``step`` its loader does not expect), so refuse at setup, not at the first resume.
    """
    from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE

    if use_distributed_optimizer and not HAVE_APEX_OR_TE:
        raise CheckpointError(
            "checkpointing the distributed optimizer needs Transformer Engine or Apex (megatron-core "
            "cannot reload its state with torch's Adam); set optim.use_distributed_optimizer: false here"
        )


# The signals a cluster sends to ask a job to stop gracefully; the training loop handles them.
_GRACEFUL_STOP = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


def _writer_process_init() -> None:
    """In megatron-core's result-queue process: leave graceful stops to the rank (the rank saves and
    exits; this process goes with it), die with the rank otherwise."""
    for signum in _GRACEFUL_STOP:
        signal.signal(signum, signal.SIG_IGN)
    jobs.die_with_parent()


def _install_signal_proof_results_queue() -> None:
    """megatron-core collects its checkpoint writers' results through a queue served by a
    ``multiprocessing`` Manager process, spawned at the first save and kept. Spawned, it dies of the
    SIGTERM that Slurm sends every process of a job at preemption, and the save that the signal asked
    for then fails with ``BrokenPipeError``. So the project starts that process itself, first, with
    the graceful-stop signals ignored and a parent-death signal set, and hands megatron-core its queue."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=get_context("spawn"))  # what megatron-core would start, with our initializer
        manager.start(initializer=_writer_process_init)
        filesystem_async._results_queue = manager.Queue()
        _managers.append(manager)  # kept alive (and shut down at exit) with the queue


_managers: list = []


def save(root: str | Path, step: int, model_chunks: list, optimizer, scheduler, metadata: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` (all ranks call this) and point ``latest`` at it.

    With ``optimizer=None`` the checkpoint holds weights only (conversion output, not resumable).
    """
    from megatron.core import dist_checkpointing

    from torch.distributed.checkpoint.api import CheckpointException

    final, tmp = step_dir(root, step), Path(f"{step_dir(root, step)}.tmp")
    _install_signal_proof_results_queue()
    try:
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        state = _sharded_state(model_chunks, optimizer, scheduler, is_loading=False, with_rng=optimizer is not None)
        dist_checkpointing.save(state, str(tmp))
        dist.barrier()
        if dist.get_rank() == 0:
            info = {"format_version": FORMAT_VERSION, "step": step, "layout": _layout(),
                    "weights_only": optimizer is None, **metadata}
            (tmp / METADATA).write_text(json.dumps(info, indent=2, sort_keys=True))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            atomic.write_text(Path(root) / LATEST, f"{step}\n")
    except (OSError, CheckpointException) as exc:  # e.g. no space left on device: say where
        raise CheckpointError(f"{tmp}: saving step {step} failed: {type(exc).__name__}: {exc}") from exc
    dist.barrier()
    return final


def claim_root(root: str | Path) -> contextlib.ExitStack:
    """At setup, before any step: the checkpoint root is a writable folder, and this run holds its
    lock until the returned stack is closed (a second run on the same folder is refused). Rank 0
    checks; every rank raises the same ``CheckpointError`` together, so none is left waiting."""
    stack = contextlib.ExitStack()
    problem = ""
    if dist.get_rank() == 0:
        path = Path(root)
        try:
            if path.exists() and not path.is_dir():
                raise CheckpointError(f"{root}: the checkpoint path is not a folder")
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write_test.{os.getpid()}"
            probe.write_text("")
            probe.unlink()
            stack.enter_context(jobs.exclusive_lock(path / ".lock", f"checkpoint folder {root} is in use"))
        except OSError as exc:
            problem = f"{root}: the checkpoint folder cannot be written ({exc.strerror or exc})"
        except (CheckpointError, jobs.JobError) as exc:
            problem = str(exc)
    shared = [problem]
    dist.broadcast_object_list(shared, src=0)
    if shared[0]:
        stack.close()
        raise CheckpointError(shared[0])
    return stack


def read_info(root: str | Path, step: int | None = None) -> CheckpointInfo | None:
    """The newest (or given) complete checkpoint's metadata; None when the root has none yet."""
    step = latest_step(root) if step is None else step
    if step is None:
        return None
    path = step_dir(root, step)
    meta_path = path / METADATA
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a complete checkpoint ({METADATA} is missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: corrupt metadata ({exc})") from None
    if metadata.get("format_version") != FORMAT_VERSION or metadata.get("step") != step:
        raise CheckpointError(f"{meta_path}: unexpected format_version/step {metadata!r:.200}")
    return CheckpointInfo(step, path, metadata)


def check_compatible(info: CheckpointInfo, expected: dict[str, Any]) -> None:
    """Refuse a checkpoint whose vocabulary or model shape differ from the run's."""
    saved = info.metadata
    if saved.get("vocab_size") != expected["vocab_size"]:
        raise CheckpointError(
            f"{info.path}: vocabulary mismatch: the checkpoint has {saved.get('vocab_size')} tokens "
            f"(tokenizer {saved.get('tokenizer_fingerprint')}), the tokenizer has {expected['vocab_size']} "
            f"({expected['tokenizer_fingerprint']})"
        )
    if saved.get("tokenizer_fingerprint") != expected["tokenizer_fingerprint"]:
        raise CheckpointError(
            f"{info.path}: tokenizer mismatch: checkpoint {saved.get('tokenizer_fingerprint')}, "
            f"run {expected['tokenizer_fingerprint']}"
        )
    diff = {k: (saved["model"].get(k), expected["model"].get(k)) for k in FUNCTION_FIELDS
            if saved["model"].get(k) != expected["model"].get(k)}
    if diff:
        raise CheckpointError(f"{info.path}: model differs from the run's (checkpoint, run): {diff}")


def load(info: CheckpointInfo, model_chunks: list, optimizer=None, scheduler=None) -> None:
    """Load weights; with an optimizer also its moments, the LR schedule and (same layout) RNG state."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    if optimizer is not None and info.metadata.get("weights_only"):
        raise CheckpointError(f"{info.path}: holds weights only; use it to initialise a run, not to resume one")
    with_rng = optimizer is not None and info.metadata.get("layout") == _layout()
    state = _sharded_state(model_chunks, optimizer, scheduler, is_loading=True, with_rng=with_rng)
    try:
        loaded = dist_checkpointing.load(state, str(info.path))
    except (Exception, CheckpointException) as exc:  # many kinds; all mean "unreadable"
        raise CheckpointError(f"{info.path}: cannot be loaded: {type(exc).__name__}: {exc}") from exc
    for i, chunk in enumerate(model_chunks):
        module = getattr(chunk, "module", chunk)
        module.load_state_dict(loaded[_model_key(i, len(model_chunks))])
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if with_rng:
        _restore_rng(loaded["rng_state"])

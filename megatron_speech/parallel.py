"""Process groups for tensor/pipeline/data parallelism, the same way on CPU (gloo) and GPU (nccl).

Every entry point (training, tests, conversion) starts here so that the CPU compatibility layer and
Megatron's parallel state are set up in one order, once.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_speech import backends, cpu_compat


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    sequence_parallel: bool = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(parallel: ParallelConfig, seed: int = 1234, timeout_s: int = 600) -> None:
    """Join the job (torchrun/srun environment, or a single process) and build Megatron's groups."""
    backends.silence_fallback_warnings()
    cpu_compat.enable()
    from megatron.core import parallel_state, tensor_parallel

    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))
        world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        # A lone process (conversion, benchmarks) needs no agreed port: any free one avoids clashes.
        os.environ.setdefault("MASTER_PORT", str(free_port()) if world_size == 1 else "29500")
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend="nccl" if torch.cuda.is_available() else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def is_first_stage() -> bool:
    from megatron.core import parallel_state

    return parallel_state.is_pipeline_first_stage(ignore_virtual=True)


def is_last_stage() -> bool:
    from megatron.core import parallel_state

    return parallel_state.is_pipeline_last_stage(ignore_virtual=True)


def collective_device() -> torch.device:
    """Where a tensor must live for a collective: NCCL takes CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

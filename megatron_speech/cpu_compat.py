"""Run unmodified Megatron-Core on machines without CUDA.

Megatron-Core is written for GPUs: it allocates with ``device=torch.cuda.current_device()`` or a
literal ``device="cuda"`` (the causal mask, the pipeline schedules' token counters), moves tensors
with ``.cuda()``, asserts ``grad.type() == "torch.cuda.FloatTensor"`` (gradient clipping), and
keeps a "CUDA" RNG tracker for dropout in tensor-parallel regions. Our tests and the small recipe
run the same Megatron code on CPU with the gloo backend, so those assumptions have to be met
somewhere. They are met here and nowhere else, in three ways:

1. Device remapping: a ``TorchFunctionMode`` turns any CUDA device argument (``"cuda"``,
   ``"cuda:N"``, an int, ``torch.device("cuda")``) into the CPU, makes ``Tensor.cuda()`` a no-op,
   and has ``Tensor.type()`` name the CUDA type, as it would on the GPU.
   One generic rule, not a patch per call site: the literal ``"cuda"`` strings inside Megatron
   functions cannot be patched any other way. Its cost is about 2 µs per torch call.
2. ``torch.cuda`` queries Megatron makes outside tensor creation (``current_device``,
   ``synchronize``, the RNG state functions) answer as a one-device machine whose "CUDA" generator
   is the CPU generator. That is the right emulation: dropout on CPU tensors draws from the CPU
   generator, so the tracker's fork/restore of "CUDA" state must fork/restore that one.
3. Megatron's own RNG helpers (``_get_cuda_rng_state``/``_set_cuda_rng_state``) are pointed at the
   CPU generator. The tracker's fork warns when the CPU state changes inside a "CUDA" fork; here that
   is every dropout call, by design, so that one message is filtered from its logger.

``enable()`` does nothing when CUDA is available: GPU runs execute Megatron exactly as shipped.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

_mode: TorchFunctionMode | None = None


def _to_cpu_device(device: Any) -> Any:
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments of every torch call to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # Megatron asserts e.g. grad.type() == "torch.cuda.FloatTensor"; report the CUDA name.
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1:
            args = (args[0], _to_cpu_device(args[1]), *args[2:])
        return func(*args, **kwargs)


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False):
    torch.set_rng_state(new_state)


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.device_count = lambda: 1
    cuda.synchronize = lambda device=None: None
    cuda.get_rng_state = _cpu_get_rng_state
    cuda.set_rng_state = _cpu_set_rng_state
    cuda.random.get_rng_state = _cpu_get_rng_state
    cuda.random.set_rng_state = _cpu_set_rng_state
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the generator directly.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = cuda.manual_seed


class _DropForkWarning(logging.Filter):
    """Drops "CPU RNG state changed within GPU RNG context": the two generators are one here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "CPU RNG state changed within GPU RNG context"


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = _cpu_get_rng_state
    mcore_random._set_cuda_rng_state = _cpu_set_rng_state
    logging.getLogger(mcore_random.__name__).addFilter(_DropForkWarning())


def cuda_available() -> bool:
    return torch.cuda.is_available()


def is_enabled() -> bool:
    return _mode is not None


def enable() -> bool:
    """Make Megatron-Core runnable on this process's CPU; returns True if the layer is active.

    Call before building models. Idempotent, and a no-op when CUDA is present.
    """
    global _mode
    if cuda_available():
        return False
    if _mode is None:
        _patch_torch_cuda()
        _patch_megatron_rng()
        _mode = CudaToCpuMode()
        _mode.__enter__()
        logger.info("megatron_speech.cpu_compat: CUDA absent; Megatron-Core runs on CPU (gloo).")
    return True

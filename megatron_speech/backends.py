"""Which accelerated backends this process can use, decided once and reported plainly.

Megatron-Core quietly falls back to slower paths when Transformer Engine or apex are missing, with
a scatter of warnings. We make the decision explicit instead: code asks ``available()`` and a run
logs ``describe()`` once, so a user reading a log knows whether FP8 or fused kernels were in play.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class Backends:
    cuda: bool
    transformer_engine: bool
    apex: bool
    flash_attn: bool
    fp8: bool  # hardware and TE both support FP8 (Hopper or newer)
    bf16: bool

    def describe(self) -> str:
        def mark(ok: bool) -> str:
            return "yes" if ok else "no"

        return (
            f"cuda={mark(self.cuda)} transformer_engine={mark(self.transformer_engine)} "
            f"apex={mark(self.apex)} flash_attn={mark(self.flash_attn)} fp8={mark(self.fp8)} "
            f"bf16={mark(self.bf16)}"
        )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@lru_cache(maxsize=1)
def available() -> Backends:
    cuda = torch.cuda.is_available()
    te = cuda and _importable("transformer_engine")
    fp8 = te and torch.cuda.get_device_capability()[0] >= 9
    return Backends(
        cuda=cuda,
        transformer_engine=te,
        apex=cuda and _importable("apex"),
        flash_attn=cuda and _importable("flash_attn"),
        fp8=fp8,
        bf16=(not cuda) or torch.cuda.is_bf16_supported(),
    )


def silence_fallback_warnings() -> None:
    """Megatron warns at import time for each missing optional backend; `describe()` says it once."""
    for pattern in (
        ".*Transformer Engine and Apex are not installed.*",
        ".*Apex is not installed.*",
        ".*full scope is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)

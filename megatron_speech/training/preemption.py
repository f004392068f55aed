"""Turn exit signals into a checkpoint and a clean exit at the next step boundary.

Slurm sends SIGTERM before killing a job (at ``scancel``, preemption, or ``--signal=TERM@secs``
before the time limit). Stopping mid-step would lose the step and could leave collectives hanging,
so the handler only raises a flag; the loop checks it after each step on every rank together (an
all-reduce, so a signal that reached one rank stops them all at the same step), saves, and exits with
``PREEMPTED_EXIT_CODE`` so the launcher knows to requeue.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch
import torch.distributed as dist

from megatron_speech.parallel import collective_device

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"


class ExitSignals:
    """Context manager: records the named signals instead of dying on them."""

    def __init__(self, names: list[str]) -> None:
        self.signals = [signal.Signals[name] for name in names]
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def __enter__(self) -> "ExitSignals":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        """True on every rank once any rank has received a signal (collective)."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

"""A Lightning run that stops as a crash would, at a step the test names: the resume tests crash a
run after a checkpoint and compare its resumed end with the uninterrupted run's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl


class Crashed(Exception):
    """Raised by :class:`CrashAt`; a test expects it."""


class CrashAt(pl.Callback):
    """Raises :class:`Crashed` as step ``step`` is about to train (after the checkpoints of step ``step``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Crashed(f"after the step-{self.step} checkpoint")


def crash_and_find_checkpoint(fit: Callable[..., object], folder: Path, step: int) -> tuple[Path, dict]:
    """Runs ``fit("crashed", crash=True)``, which must raise :class:`Crashed`; returns the step-``step``
    checkpoint under ``folder / "crashed"`` and the data position ``nemo_runs.ExactResume`` kept in it."""
    import torch

    from megatron_speech.nemo_runs import ExactResume

    try:
        fit("crashed", crash=True)
    except Crashed:
        pass
    else:
        raise AssertionError("the run did not crash")
    (checkpoint,) = (folder / "crashed").glob(f"**/*step={step}.ckpt")
    return checkpoint, torch.load(checkpoint, map_location="cpu", weights_only=False)[ExactResume.KEY]

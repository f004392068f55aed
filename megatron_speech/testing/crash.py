"""A Lightning run that stops as a crash would, at a step the test names: the resume tests crash a
run after a checkpoint and compare its resumed end with the uninterrupted run's."""

from __future__ import annotations

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

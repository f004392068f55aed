"""What the NeMo recipes (speech tokenizer, speech decoder) share around ``trainer.fit``: one writer
a run folder, resuming from its newest checkpoint with the settings it was made with, the library
versions beside the figures, and the loud warning when the time guard cut a schedule short."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from megatron_speech import jobs
from megatron_speech.config_loader import differing_keys


@contextlib.contextmanager
def run_folder(out: Path) -> Iterator[str | None]:
    """Hold ``out`` as this run's (a second run on the same folder is refused at once, naming the
    holder) and give the newest Lightning checkpoint under ``out/checkpoints`` to resume from, or None.
    Two runs writing one folder would interleave checkpoints and overwrite each other's ``.nemo``."""
    held = contextlib.ExitStack()
    try:
        held.enter_context(jobs.exclusive_lock(out / ".lock", f"run folder {out} is in use"))
    except jobs.JobError as exc:
        raise SystemExit(f"error: {exc}") from None
    with held:
        resume = newest_checkpoint(out / "checkpoints")
        if resume:
            print(f"resuming from {resume}", flush=True)
        yield resume


def newest_checkpoint(folder: Path) -> str | None:
    found = sorted(folder.glob("**/*.ckpt"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else None


def check_resume_settings(resume: str | None, model_cfg: DictConfig) -> None:
    """Refuse to resume from a checkpoint made with other model settings, naming the keys that differ.

    Lightning refuses another model shape but would go on silently with another learning rate, codebook
    restart interval or training manifest, and the report would describe a run that never happened (the
    Megatron runs likewise refuse a checkpoint of another model or tokenizer). The schedule's length and
    time guard are trainer settings, outside ``model``: a longer ``trainer.max_steps`` extends a run."""
    if not resume:
        return
    import torch

    saved = torch.load(resume, map_location="cpu", mmap=True, weights_only=False).get("hyper_parameters", {})
    if "cfg" not in saved:
        raise SystemExit(f"error: {resume}: no model settings in the checkpoint (hyper_parameters.cfg); "
                         "not a checkpoint of this recipe")
    differ = differing_keys(OmegaConf.to_container(saved["cfg"], resolve=True),
                            OmegaConf.to_container(model_cfg, resolve=True))
    if differ:
        raise SystemExit(f"error: {resume} was made with other model settings; these differ: "
                         f"{', '.join('model.' + k for k in differ)}. Rerun with the settings it was made "
                         "with, or train in a new run folder (another name=...)")


def versions() -> dict[str, str]:
    """Library versions beside the figures: step times moved between sessions with these unrecorded."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "nemo-toolkit", "lightning", "lhotse")}


def cut_short(trainer, max_steps: int) -> bool:
    return 0 < max_steps and trainer.global_step < max_steps


def warn_cut_short(steps: int, max_steps: int, max_time) -> None:
    """A recipe is step-based; its time limit is only a guard, and a run it stopped must say so."""
    bar = "!" * 100
    print(f"{bar}\nWARNING: the schedule was cut short: {steps} of {max_steps} steps ran before trainer.max_time "
          f"({max_time}) stopped training (a busy or slow machine?).\nThe learning-rate schedule did not finish; "
          f"figures from this run are not the recipe's. The report records cut_short: true.\n{bar}",
          file=sys.stderr, flush=True)

"""What the NeMo recipes (speech tokenizer, speech decoder) share around ``trainer.fit``: one writer
a run folder, resuming from its newest checkpoint with the settings it was made with and where the
uninterrupted run would be, the library versions beside the figures, and the loud warning when the
time guard cut a schedule short."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import lightning.pytorch as pl
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


class EpochBatches:
    """Batches of a map-style dataset whose order depends only on ``(seed, epoch)``: a shuffle a
    resumed run can replay, which a ``DataLoader(shuffle=True)`` is not (it draws each epoch's order
    from the global generator). Each rank takes its share of the epoch's order (rank r every r-th
    index, the order cut to a multiple of the ranks so that every rank has as many batches), so it
    stands in for Lightning's distributed sampler (``use_distributed_sampler: false``).

    A batch is a list of ``(epoch, index)`` keys: a dataset's random choices for an item (a crop) can
    then depend on the item and its epoch alone, not on how many items a generator served before."""

    def __init__(self, size: int, batch_size: int, seed: int, drop_last: bool = True) -> None:
        if size < 1 or batch_size < 1:
            raise ValueError(f"EpochBatches needs items and a batch size (got {size} items, "
                             f"batches of {batch_size})")
        self.size, self.batch_size, self.seed, self.drop_last = size, batch_size, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        import torch
        import torch.distributed as dist

        rank, ranks = 0, 1
        if dist.is_available() and dist.is_initialized():
            rank, ranks = dist.get_rank(), dist.get_world_size()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        return order[: len(order) - len(order) % ranks][rank::ranks]

    def __len__(self) -> int:
        share = len(self._indices())
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = self._indices()
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start: start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield [(self.epoch, i) for i in batch]


class ResumableBatches:
    """A batch sampler (Lhotse's, or any with ``set_epoch``) whose next pass can start after the
    batches a resumed run already trained on.

    Lhotse's own ``state_dict`` refuses the samplers NeMo builds (a custom batch constraint). The
    skipped batches are drawn and dropped by the sampler, which holds only the cuts' metadata, so no
    audio is read for them."""

    def __init__(self, sampler) -> None:
        self.sampler, self._skip = sampler, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning's call at each epoch's start
        self.sampler.set_epoch(epoch)

    def restore(self, epoch: int, batches: int) -> None:
        """The next pass is epoch ``epoch`` from its batch ``batches`` on; the one after, whole again."""
        self.sampler.set_epoch(epoch)
        self._skip = batches

    def __len__(self) -> int:  # the whole epoch's: Lightning counts a resumed epoch's trained batches in it
        return len(self.sampler)

    def __iter__(self) -> Iterator:
        skip, self._skip = self._skip, 0
        return islice(iter(self.sampler), skip, None)


class ExactResume(pl.Callback):
    """A resumed run continues as the uninterrupted one would have: Lightning's checkpoint holds the
    weights, the optimizer, the schedule and the step; this adds where the training data was (epoch,
    batches trained in it, for a loader whose sampler or batch sampler is :class:`ResumableBatches`)
    and every rank's random generators (the quantizer's code restarts, dropout, the flow's noise),
    gathered into rank 0's checkpoint. Before it, a resume mid-epoch started the epoch's data over. A
    checkpoint made without it resumes as before; one made with another number of ranks keeps its data
    position and leaves the generators as they are, saying so."""

    KEY = "exact_resume"

    def __init__(self) -> None:
        self._generators = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Called on every rank (Lightning's ``dump_checkpoint``), so the gather below is collective."""
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # trained in this epoch
        every = [_generators()]
        if trainer.world_size > 1:
            import torch.distributed as dist

            every = [None] * trainer.world_size
            dist.all_gather_object(every, _generators())
        checkpoint[self.KEY] = {"epoch": int(trainer.current_epoch), "batches": int(batches),
                                "generators": every}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get(self.KEY)
        if state is None:
            return
        loader = pl_module.train_dataloader()
        for sampler in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
            if isinstance(sampler, ResumableBatches):  # before Lightning first iterates the loader
                sampler.restore(state["epoch"], state["batches"])
        every = state["generators"]
        if isinstance(every, dict):  # a one-process checkpoint of the first format
            every = [every]
        if every is None or len(every) != trainer.world_size:
            if trainer.global_rank == 0:
                print(f"resuming on {trainer.world_size} ranks from a checkpoint with "
                      f"{'no' if every is None else len(every)} ranks' random generators: the data goes on "
                      "where it was, the random draws (dropout, code restarts) do not repeat the "
                      "uninterrupted run's", file=sys.stderr, flush=True)
            return
        self._generators = every[trainer.global_rank]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """The generators go back at the first step: since the restore, the sanity check, the loaders'
        start and Lightning's rerun of the validation the checkpoint was saved in have drawn from them,
        and the uninterrupted run drew nothing between its save and that step."""
        if self._generators is None:
            return
        import numpy as np
        import torch

        torch.set_rng_state(self._generators["torch"])
        random.setstate(self._generators["python"])
        np.random.set_state(self._generators["numpy"])
        if "cuda" in self._generators and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._generators["cuda"])
        self._generators = None


def _generators() -> dict:
    """This process's random generators: torch's (and CUDA's), Python's and NumPy's."""
    import numpy as np
    import torch

    generators = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        generators["cuda"] = torch.cuda.get_rng_state_all()
    return generators


def module_param_groups(model, groups: DictConfig | dict | None) -> list[dict]:
    """The optimizer's parameter groups from ``model.optim_param_groups``: a module's path (dotted, as
    ``named_modules`` writes it: ``net.decoder``, ``net.encoder.layers.1``) to the optimizer settings its
    parameters take instead of ``optim``'s (a lower learning rate for pretrained layers, say).

    NeMo's own ``setup_optimizer_param_groups`` reads the same key but only for the model's direct
    attributes, and files a parameter under a group by its name's prefix, so ``layers.1`` would also take
    ``layers.10``; here a group is a module and its parameters, and a parameter in two groups is refused.
    Parameters in no group come first, with ``optim``'s settings. Frozen parameters stay in their group
    (the optimizer skips a parameter without a gradient)."""
    if not groups:
        return [{"params": list(model.parameters())}]
    modules = dict(model.named_modules())
    owner: dict[int, str] = {}
    named: list[dict] = []
    for path, settings in dict(groups).items():
        if path not in modules:
            last = str(path).rsplit(".", 1)[-1]
            near = sorted(m for m in modules if m and m.rsplit(".", 1)[-1] == last)[:5]
            raise ValueError(f"model.optim_param_groups: no module {path!r} in the model"
                             + (f" (modules with that last name: {near})" if near else ""))
        params = list(modules[path].parameters())
        for param in params:
            if id(param) in owner:
                raise ValueError(f"model.optim_param_groups: {path!r} and {owner[id(param)]!r} share "
                                 "parameters; a parameter takes one group's settings")
            owner[id(param)] = path
        if isinstance(settings, DictConfig):
            settings = OmegaConf.to_container(settings, resolve=True)
        named.append({"params": params, **settings})
    rest = [p for p in model.parameters() if id(p) not in owner]
    return ([{"params": rest}] if rest else []) + named


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

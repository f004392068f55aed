"""One model from the mean of a run's last checkpoints (Polyak averaging of saved weights).

Late in a decaying learning-rate schedule, successive checkpoints of a small model scatter around a
flat region, and what they generate (a text-to-token model's spans) varies from one to the next by as
much as a setting does. Their mean is one model that needs no training and no choice of a single step
on a test set. It is written as a weights-only training checkpoint, so synthesis, evaluation and
conversion read it as any other.
"""

from __future__ import annotations

from pathlib import Path

from megatron_speech import parallel as par
from megatron_speech.checkpoints import megatron as checkpoint
from megatron_speech.checkpoints.trained import load_trained_model, run_metadata
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.models.sharding import gather_full_state_dict, load_full_state_dict


def complete_steps(root: str | Path) -> list[int]:
    """The steps of the complete checkpoints under ``root``, oldest first (a torn ``.tmp`` is not one)."""
    steps = []
    for path in Path(root).glob("iter_*"):
        number = path.name[len("iter_"):]
        if path.is_dir() and number.isdigit() and (path / checkpoint.METADATA).exists():
            steps.append(int(number))
    return sorted(steps)


def last_steps(root: str | Path, count: int) -> list[int]:
    """The ``count`` newest complete checkpoints' steps; an error naming the root when it has fewer."""
    steps = complete_steps(root)
    if count < 1 or len(steps) < count:
        raise checkpoint.CheckpointError(f"{root}: asked for the last {count} checkpoints, it holds {len(steps)}: "
                                         f"{steps}")
    return steps[-count:]


def average_checkpoints(root: str | Path, tokenizer_dir: str | Path, output_root: str | Path,
                        steps: list[int]) -> Path:
    """Write the mean of checkpoints ``steps`` of ``root`` as a weights-only checkpoint at the newest
    of those steps under ``output_root`` (its ``latest`` points at it). Every checkpoint must hold
    the same model for the same tokenizer; the output records where its weights came from."""
    if not steps or len(set(steps)) != len(steps):
        raise ValueError(f"steps must be distinct and at least one, got {steps}")
    if Path(output_root).resolve() == Path(root).resolve():
        raise checkpoint.CheckpointError(f"{output_root}: the output must not be the checkpoints' own folder")
    tokenizer = SpeechTextTokenizer.load(tokenizer_dir)
    par.init_distributed(par.ParallelConfig())
    try:
        model, config, _ = load_trained_model(str(root), tokenizer, steps[0])
        total = {name: weight.double() for name, weight in gather_full_state_dict(model).items()}
        for step in steps[1:]:
            info = checkpoint.read_info(root, step)
            checkpoint.check_compatible(info, run_metadata(config, tokenizer))  # as every load checks
            checkpoint.load(info, [model])
            for name, weight in gather_full_state_dict(model).items():
                total[name] += weight
        load_full_state_dict(model, {name: (weight / len(steps)).float() for name, weight in total.items()})
        metadata = {**run_metadata(config, tokenizer),
                    "averaged_from": {"root": str(Path(root).resolve()), "steps": sorted(steps)}}
        with checkpoint.claim_root(output_root):
            return checkpoint.save(output_root, max(steps), [model], None, None, metadata)
    finally:
        par.shutdown()

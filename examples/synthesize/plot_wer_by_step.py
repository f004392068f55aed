"""Synthetic-span WER against training step, one line a text-to-token run: the validation loss stops
saying much once it flattens, while the WER of the spans (what synthesis is for) keeps moving, so
the schedule is chosen on this curve.

    .venv/bin/python examples/synthesize/plot_wer_by_step.py --output examples/synthesize/wer_by_step.png \
        --run "2,000-step schedule=work/t2t_steps" --run "4,000-step schedule=work/t2t_4k"

Each run folder holds ``eval200_<step>.json`` reports of ``tools/evaluate_synthesis.py`` (``--limit
200 --set checkpoint_step=<step>``; README). ``--axis beam`` plots against the beam size instead,
from ``eval_dev_beam<N>.json`` reports (``--set generation.strategy=beam --set
generation.beam_size=<N>``; beam 1: the greedy report):

    .venv/bin/python examples/synthesize/plot_wer_by_step.py --axis beam \
        --output examples/synthesize/wer_by_beam.png --run "1,024 codes=work/beam42/base37_last"
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

# axis: (report file name, x label, y label)
AXES = {
    "step": (r"eval200_(\d+)\.json$", "text-to-token training step", "synthetic-span WER (%), 200 test sentences"),
    "beam": (r"eval_dev_beam(\d+)\.json$", "beam size (1: greedy)", "synthetic-span WER (%), 400 dev sentences"),
}


def wer_by_step(folder: Path, pattern: str = AXES["step"][0]) -> list[tuple[int, float]]:
    """(step or beam size, synthetic WER in %) of every report in ``folder`` whose name matches
    ``pattern``, in order."""
    points = []
    for path in folder.iterdir():
        match = re.search(pattern, path.name)
        if match:
            points.append((int(match.group(1)), 100 * json.loads(path.read_text())["synthetic_wer"]))
    if not points:
        raise SystemExit(f"{folder}: no reports named like {pattern}")
    return sorted(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--axis", choices=sorted(AXES), default="step")
    args = parser.parse_args()
    pattern, xlabel, ylabel = AXES[args.axis]
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs: set[int] = set()
    for run in args.run:
        label, _, folder = run.partition("=")
        steps, wers = zip(*wer_by_step(Path(folder), pattern))
        xs.update(steps)
        ax.plot(steps, wers, marker="o", label=label)
        print(label, ", ".join(f"{s}: {w:.1f}%" for s, w in zip(steps, wers)))
    ax.axhline(20, color="grey", linestyle="--", linewidth=1, label="goal (20%)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if args.axis == "beam":
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(xs))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)


if __name__ == "__main__":
    main()

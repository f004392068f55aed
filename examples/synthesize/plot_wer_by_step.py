"""Synthetic-span WER against training step, one line a text-to-token run: the validation loss stops
saying much once it flattens, while the WER of the spans (what synthesis is for) keeps moving, so
the schedule is chosen on this curve.

    .venv/bin/python examples/synthesize/plot_wer_by_step.py --output examples/synthesize/wer_by_step.png \
        --run "2,000-step schedule=work/t2t_steps" --run "4,000-step schedule=work/t2t_4k"

Each run folder holds ``eval200_<step>.json`` reports of ``tools/evaluate_synthesis.py`` (``--limit
200 --set checkpoint_step=<step>``; README).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

REPORT = re.compile(r"eval200_(\d+)\.json$")


def wer_by_step(folder: Path) -> list[tuple[int, float]]:
    """(step, synthetic WER in %) of every report in ``folder``, by step."""
    points = []
    for path in folder.iterdir():
        match = REPORT.search(path.name)
        if match:
            points.append((int(match.group(1)), 100 * json.loads(path.read_text())["synthetic_wer"]))
    if not points:
        raise SystemExit(f"{folder}: no eval200_<step>.json reports")
    return sorted(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in args.run:
        label, _, folder = run.partition("=")
        steps, wers = zip(*wer_by_step(Path(folder)))
        ax.plot(steps, wers, marker="o", label=label)
        print(label, ", ".join(f"{s}: {w:.1f}%" for s, w in zip(steps, wers)))
    ax.axhline(20, color="grey", linestyle="--", linewidth=1, label="goal (20%)")
    ax.set_xlabel("text-to-token training step")
    ax.set_ylabel("synthetic-span WER (%), 200 test sentences")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)


if __name__ == "__main__":
    main()

"""Has a speech-text run begun to map speech to words? Its transcript loss after the speech against
with none, and its speech loss after the transcript against alone, by windows of steps (a markdown
table; ``report.mapping_curve`` says why). For the recipe's warm-up:

    .venv/bin/python examples/mini/mapping_curve.py work/mini/warmup/speech_warmup/metrics.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (this folder's module, as run.py imports it)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", type=Path, help="a tools/pretrain.py metrics.jsonl")
    parser.add_argument("--window", type=int, default=500, help="steps a row")
    args = parser.parse_args()
    rows = report.mapping_curve(args.metrics, args.window)
    if not rows:
        raise SystemExit(f"{args.metrics}: no steps with per-source, per-target losses (ASR and TTS sources)")
    print("| steps | transcript after its speech | transcript alone | gap | speech after its transcript | speech alone | gap |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [r["transcript_after_speech"], r["transcript_alone"], _gap(r["transcript_alone"], r["transcript_after_speech"]),
                 r["speech_after_transcript"], r["speech_alone"], _gap(r["speech_alone"], r["speech_after_transcript"])]
        print(f"| {r['first_step']:,}–{r['last_step']:,} | " + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + " |")


def _gap(alone: float | None, after: float | None) -> float | None:
    return None if alone is None or after is None else alone - after


if __name__ == "__main__":
    main()

"""The paper in miniature's figures: one line a stage, the final table, and for more than one arm or
seed the ablation (mean ± sd per arm, task and modality) with its plot against interleaved tokens."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from megatron_speech import atomic
from megatron_speech.data.indexed import read_metadata

import fork  # this folder's module (a forked folder's record), as run.py imports it

# what each task is scored by in the tables and the plot
PRIMARY = {"spoken_qa": "exact_match", "fact_choice": "acc", "fact_control": "acc", "story_cloze": "acc"}
ARROWS = {"s2t": "S→T", "s2s": "S→S", "t2t": "T→T"}


# ---- figures of one stage, read from the files the tools wrote ---------------------------------


# the pairs that say whether speech and text predict each other: (source, predicted part) with its
# partner (the same part, predicted with nothing of the other modality before it)
MAPPING = {"transcript_after_speech": ("asr", "text"), "transcript_alone": ("tts", "text"),
           "speech_after_transcript": ("tts", "speech"), "speech_alone": ("asr", "speech")}


def mapping_curve(metrics_jsonl: Path, window: int = 500) -> list[dict]:
    """Mean losses a window of steps of the transcript after its speech (ASR samples) against the
    transcript with none before it (TTS samples), and of the speech after its transcript against the
    speech alone. Why: a model that has not learned the mapping predicts each modality only from
    itself, and the two losses of a pair are equal; the arms of the ablation only differ in what
    speech means once the first of a pair falls clearly below the second. A resumed run's repeated
    steps count once (the newest record)."""
    blocks: dict[int, list[dict]] = {}
    for r in _train_steps(_records(metrics_jsonl)):
        if r.get("source_target_losses"):
            blocks.setdefault((r["step"] - 1) // window, []).append(r)
    rows = []
    for block in blocks.values():
        row = {"first_step": block[0]["step"], "last_step": block[-1]["step"]}
        for name, (source, target) in MAPPING.items():
            values = [v for r in block if (v := r["source_target_losses"].get(source, {}).get(target)) is not None]
            row[name] = statistics.fmean(values) if values else None
        rows.append(row)
    return rows


def speech_tokenizer_figures(eval_json: Path) -> dict:
    r = json.loads(eval_json.read_text())
    by_manifest = {res["manifest"]: res for res in r["results"]}
    return {"wer_training_voices": by_manifest["test.jsonl"]["wer"],
            "wer_held_out_voice": by_manifest["test_heldout_voice.jsonl"]["wer"],
            "codebook_usage": by_manifest["test.jsonl"]["codebook_usage"], "steps": r.get("steps"),
            "cut_short": r.get("cut_short", False)}  # a training run's report has both; an evaluation's neither


def _records(metrics_jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]


def _train_steps(records: list[dict]) -> list[dict]:
    """The training records by step, each step's newest (a resumed run appends its steps again)."""
    steps = {r["step"]: r for r in records if r.get("split", "train") == "train"}
    return [steps[s] for s in sorted(steps)]


def training_figures(metrics_jsonl: Path) -> dict:
    """Loss and per-source losses, averaged over the last fifth of the steps (one step is noisy, and
    holds only some sources), and the last validation loss where the run validated."""
    lines = _records(metrics_jsonl)
    records = _train_steps(lines)
    if not records:
        raise ValueError(f"{metrics_jsonl}: no training steps recorded")
    last_step = records[-1]["step"]
    tail = [r for r in records if r["step"] > last_step - max(1, last_step // 5)]
    figures = {"steps": last_step, "loss": statistics.fmean(r["loss"] for r in tail)}
    for name in dict.fromkeys(n for r in tail for n in r.get("source_losses", {})):
        values = [r["source_losses"][name] for r in tail if r["source_losses"].get(name) is not None]
        if values:
            figures[f"loss_{name}"] = statistics.fmean(values)
    # the same split by what is predicted (``loss_asr_text``: the transcripts given the speech),
    # where a source predicts both text and speech
    for name in dict.fromkeys(n for r in tail for n in r.get("source_target_losses", {})):
        splits = [r["source_target_losses"][name] for r in tail]
        parts = {t: [x[t] for x in splits if x.get(t) is not None] for t in ("text", "speech")}
        if all(parts.values()):
            figures.update({f"loss_{name}_{t}": statistics.fmean(v) for t, v in parts.items()})
    valid = [r for r in lines if r.get("split") == "valid"]
    if valid:
        figures["valid_loss"] = valid[-1]["loss"]
    return figures


def synthesis_figures(eval_json: Path, metrics_jsonl: Path) -> dict:
    r = json.loads(eval_json.read_text())
    return {"synthetic_span_wer": r["synthetic_wer"], "real_tokens_wer": r.get("real_tokens_wer"),
            "spans": r["spans"], **training_figures(metrics_jsonl)}


def indexed_tokens(prefix: Path) -> int:
    return int(read_metadata(prefix)["num_tokens"])


def task_figures(eval_json: Path) -> dict:
    """``<task>_<modality>``: the task's primary metric (QA: exact match; stories: accuracy)."""
    report = json.loads(eval_json.read_text())
    return {f"{task}_{modality}": result[PRIMARY[task]]
            for task, t in report["tasks"].items() for modality, result in t["modalities"].items()}


def fact_kinds(eval_json: Path, world: Path) -> dict[str, float]:
    """Accuracy by kind of fact and modality, of the facts and of their controls
    (``fact_choice_s2t_job``). Why: the kinds are heard unequally (trades and pets are common words, the
    people and towns invented names), so knowledge carried into speech for one kind can show where the
    whole does not. Empty for an evaluation without per-item results."""
    report = json.loads(eval_json.read_text())
    out = {}
    for task in ("fact_choice", "fact_control"):
        items = world / f"{task}.jsonl"
        if not items.exists():  # a world built before the facts task (session 29)
            continue
        kinds = {r["id"]: r["fact"] for r in map(json.loads, items.read_text().splitlines())}
        for modality, result in report["tasks"].get(task, {}).get("modalities", {}).items():
            by_kind: dict[str, list[bool]] = {}
            for item in result.get("results", []):
                by_kind.setdefault(kinds[item["id"]], []).append(item["correct"])
            out.update({f"{task}_{modality}_{kind}": statistics.fmean(v) for kind, v in by_kind.items()})
    return out


def one_line(figures: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items()) or "-"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


# ---- the final report ---------------------------------------------------------------------------


def write(recipe, records: dict) -> str:
    """``report.json`` and ``report.md`` in the work folder (and ``ablation.png`` for more than one
    arm); returns the Markdown, which the run prints."""
    arms = _arm_results(recipe, records)
    lines = [f"# The paper in miniature: preset {recipe.name}", "", "## Stages", "",
             "| stage | minutes | figures |", "|---|---:|---|"]
    for name, record in records.items():
        if re.fullmatch(r"(pretrain|evaluate)_.+_seed\d+", name):  # an arm's: in the ablation table
            continue
        lines.append(f"| {name} | {record['seconds'] / 60:.1f} | {one_line(record['figures'])} |")
    total = sum(r["seconds"] for r in records.values()) / 60
    lines += ["", f"Stage time in all: {total:.1f} min (this run and any earlier one it resumed).", ""]
    forked = recipe.w(fork.RECORD)
    if forked.exists():
        f = json.loads(forked.read_text())
        lines[-1:] = [f"Started from {f['source']} (differing: {', '.join(f['differing']) or 'nothing'}): its "
                      f"{len(f['kept'])} kept stages' figures and minutes are the source's.", ""]
    lines += ablation_table(arms)
    lines += fact_kind_table(arms)
    cut = records.get("speech_tokenizer", {}).get("figures", {}).get("cut_short")
    if cut:
        lines += ["", "**WARNING: the speech tokenizer's schedule was cut short by its time guard; its figures "
                  "are not the preset's.**"]
    markdown = "\n".join(lines) + "\n"
    atomic.write_text(recipe.w("report.md"), markdown)
    atomic.write_json(recipe.w("report.json"), {"preset": recipe.name, "stages": records, "arms": arms})
    if len({a["arm"] for a in arms}) > 1:
        plot(arms, recipe.w("ablation.png"))
        markdown += f"\nplot: {recipe.w('ablation.png')}\n"
    return markdown


def _arm_results(recipe, records: dict) -> list[dict]:
    out = []
    for seed in recipe.p["seeds"]:
        for arm in recipe.p["arms"]:
            train = records[f"pretrain_{arm}_seed{seed}"]["figures"]
            scores = records[f"evaluate_{arm}_seed{seed}"]["figures"]
            kinds = fact_kinds(recipe.arm_dir(arm, seed) / "eval.json", recipe.w("world"))
            out.append({"arm": arm, "seed": seed, "interleaved_tokens": train["interleaved_tokens"],
                        "losses": {k: v for k, v in train.items() if k.startswith("loss")}, "scores": scores,
                        "fact_kinds": kinds})
    return out


def summarize(arms: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """arm -> metric -> (mean, sd, seeds); sd is 0 for one seed. An arm without a metric (arm A has
    no interleaved loss) lacks its key."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for arm in dict.fromkeys(a["arm"] for a in arms):
        runs = [{**a["scores"], **a["losses"]} for a in arms if a["arm"] == arm]
        out[arm] = {}
        for metric in dict.fromkeys(m for r in runs for m in r):
            values = [r[metric] for r in runs if metric in r]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            out[arm][metric] = (statistics.fmean(values), sd, len(values))
    return out


def ablation_table(arms: list[dict]) -> list[str]:
    summary = summarize(arms)
    names = list(summary)
    metrics = list(dict.fromkeys(m for n in names for m in summary[n]))
    seeds = len({a["seed"] for a in arms})
    lines = [f"## Arms (mean ± sd over {seeds} seed{'s' if seeds > 1 else ''})", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for metric in metrics:
        cells = [f"{summary[n][metric][0]:.3f} ± {summary[n][metric][1]:.3f}" if metric in summary[n] else "–"
                 for n in names]
        lines.append(f"| {_label(metric)} | " + " | ".join(cells) + " |")
    return lines


def fact_kind_table(arms: list[dict]) -> list[str]:
    """Each kind of fact's accuracy above its control, by modality and arm (mean ± sd over seeds)."""
    names = list(dict.fromkeys(a["arm"] for a in arms))
    keys = [k[len("fact_choice_"):] for k in arms[0].get("fact_kinds", {}) if k.startswith("fact_choice_")]
    keys.sort(key=lambda k: list(ARROWS).index(k.split("_")[0]))  # S→T first, as in the ablation table
    if not keys:
        return []
    lines = ["", "## Facts by kind: accuracy above the control (mean ± sd over seeds)", "",
             "| modality, fact | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key in keys:
        cells = []
        for name in names:
            lifts = [a["fact_kinds"][f"fact_choice_{key}"] - a["fact_kinds"][f"fact_control_{key}"]
                     for a in arms if a["arm"] == name]
            sd = statistics.stdev(lifts) if len(lifts) > 1 else 0.0
            cells.append(f"{statistics.fmean(lifts):+.3f} ± {sd:.3f}")
        modality, kind = key.split("_", 1)
        lines.append(f"| {ARROWS.get(modality, modality)} {kind} | " + " | ".join(cells) + " |")
    return lines


def _label(metric: str) -> str:
    for task in PRIMARY:
        if metric.startswith(task + "_"):
            modality = metric[len(task) + 1:]
            return f"{task} {ARROWS.get(modality, modality)} ({PRIMARY[task]})"
    return metric


def plot(arms: list[dict], path: Path) -> None:
    """Accuracy against interleaved tokens seen, one line a task and modality (the paper's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in arms[0]["scores"]]
    panels = [task for task in PRIMARY if task != "fact_control"]  # the control: dashed, in the facts' panel
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharex=True)
    for ax, task in zip(axes, panels):
        prefixes = (task + "_", "fact_control_") if task == "fact_choice" else (task + "_",)
        for metric in (m for m in metrics if m.startswith(prefixes)):
            xs = sorted({a["interleaved_tokens"] for a in arms})
            groups = [[a["scores"][metric] for a in arms if a["interleaved_tokens"] == x] for x in xs]
            means = [statistics.fmean(g) for g in groups]
            sds = [statistics.stdev(g) if len(g) > 1 else 0.0 for g in groups]
            control, modality = metric.startswith("fact_control_"), metric.rsplit("_", 1)[1]
            ax.errorbar([x / 1e6 for x in xs], means, yerr=sds, marker="o", capsize=3,
                        color=f"C{list(ARROWS).index(modality)}" if modality in ARROWS else None,
                        linestyle="--" if control else "-",
                        label=ARROWS.get(modality, modality) + (" control" if control else ""))
        ax.set_title(f"{task} ({PRIMARY[task]})")
        ax.set_xlabel("interleaved tokens seen (millions)")
        ax.set_ylabel(PRIMARY[task])
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)

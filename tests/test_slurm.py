"""The CPU sbatch script on a real one-node Slurm cluster: SIGTERM mid-run, requeue, exact resume."""

import json
import sys
from pathlib import Path

import pytest

from megatron_speech.testing.multiprocess import run_processes
from megatron_speech.testing.slurm import LocalSlurmCluster, wait_for
from megatron_speech.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = "examples/pretrain/configs/cpu_tiny.yaml"
STEPS = 60


def _overrides(root: Path, sources: list, work: Path) -> dict:
    return {
        "tokenizer": str(root / "tokenizer"),
        "data.sources": sources,
        "data.seq_length": 64,
        "model.max_sequence_length": 64,
        "schedule.steps": STEPS,
        "schedule.eval_interval": 0,
        "schedule.metrics_file": str(work / "metrics.jsonl"),
        "checkpoint.dir": str(work / "checkpoints"),
        "checkpoint.save_interval": 0,
    }


def reference_job(overrides: dict) -> dict[int, float]:
    from megatron_speech.parallel import shutdown
    from megatron_speech.training.loop import pretrain

    outcome = pretrain(TrainConfig.from_yaml(REPO / CONFIG, overrides))
    shutdown()
    return {step: r.loss for step, r in outcome.results.items()}


def _metrics(path: Path) -> dict[int, float]:
    """Each step's loss; a step run twice (before and after the requeue) keeps its last value."""
    if not path.exists():
        return {}
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def test_sbatch_job_is_signalled_requeued_and_resumes_exactly(blend, tmp_path):
    root, _, sources = blend
    work = tmp_path / "run"
    work.mkdir()
    overrides = _overrides(root, sources, work)
    args = [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]
    log = work / "job.out"
    with LocalSlurmCluster(tmp_path / "slurm", cpus=2) as cluster:
        job = cluster.submit(REPO / "examples/pretrain/cpu.sbatch", *args, cwd=REPO,
                             options=(f"--output={log}",), env={"PYTHON": sys.executable})

        def job_log() -> str:
            text = log.read_text() if log.exists() else "(no job log yet)"
            return f"{text}\n{cluster.run('scontrol', 'show', 'job', str(job), check=False)}"

        wait_for(lambda: max(_metrics(work / "metrics.jsonl"), default=0) >= 5, 180, "step 5", job_log)
        cluster.run("scancel", "--signal=TERM", str(job))
        wait_for(lambda: cluster.job_field(job, "Restarts") == "1" and
                 cluster.job_field(job, "JobState") == "PENDING", 120, "the requeue", job_log)
        wait_for(lambda: cluster.completed(job), 300, "the resumed job to finish", job_log)
    text = log.read_text()
    assert "[exit] SIGTERM" in text and "requeueing job" in text, text
    assert "(restart 1)" in text and "resumed from" in text, text
    stopped_at = int(text.split("[exit] SIGTERM: stopping after step ")[1].split()[0])
    assert 5 <= stopped_at < STEPS
    resumed = _metrics(work / "metrics.jsonl")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    reference = run_processes(reference_job, 2, {**overrides, "checkpoint.dir": str(tmp_path / "ref"),
                                                 "schedule.metrics_file": None})[0]
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step

"""The Slurm scripts on a real one-node cluster: pre-training (SIGTERM mid-run, requeue, exact resume)
and a synthesis array with its finalize job."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_speech.data.default_corpus import default_documents
from megatron_speech.testing.multiprocess import alive, run_processes
from megatron_speech.testing.slurm import LocalSlurmCluster, wait_for
from megatron_speech.training.config import TrainConfig
from megatron_speech.testing.tiny import SYNTHETIC_RATE

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
        # Periodic saves: preemption after the first one is the case that once failed the job
        # (megatron-core's writer queue died of the same SIGTERM; the signalled save broke).
        "checkpoint.save_interval": 4,
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
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines()) if r["split"] == "train"}


@pytest.mark.slow  # minutes of real Slurm jobs
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

        wait_for(lambda: max(_metrics(work / "metrics.jsonl"), default=0) >= 5
                 and (work / "checkpoints" / "latest").exists(), 180, "step 5 and a saved checkpoint", job_log)
        cluster.run("scancel", "--signal=TERM", str(job))  # every process of the job, writers included
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


@pytest.mark.slow  # minutes of real Slurm jobs
def test_synthesis_array_and_finalize(t2t, tmp_path):
    work, tokenizer_dir, tokenizer = t2t
    corpus = tmp_path / "corpus.jsonl"
    docs = [" ".join(d.split()[:30]) for d in default_documents()[1500:1530]]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    config = tmp_path / "synth.yaml"
    config.write_text(json.dumps({
        "inputs": [str(corpus)], "output_dir": str(tmp_path / "out"), "checkpoint": str(work / "ckpt"),
        "tokenizer": str(tokenizer_dir), "chunk_bytes": 1500, "indexed_prefix": str(tmp_path / "indexed"),
        "generation": SYNTHETIC_RATE}))
    logs = tmp_path / "logs"
    logs.mkdir()
    with LocalSlurmCluster(tmp_path / "slurm", cpus=2) as cluster:
        env = {**cluster.env, "SHARDS": "2", "PYTHON": sys.executable,
               "SBATCH_OPTIONS": f"--output={logs}/%x-%A_%a.out"}
        submitted = subprocess.run(["bash", "examples/synthesize/submit.sh", str(config)], cwd=REPO, env=env,
                                   capture_output=True, text=True, check=True)
        array, final = map(int, submitted.stdout.split())

        def detail() -> str:
            return "\n".join(p.read_text() for p in sorted(logs.iterdir())) + cluster.run(
                "scontrol", "show", "job", str(final), check=False)

        def finished() -> bool:
            if cluster.job_field(final, "Reason") == "DependencyNeverSatisfied":
                raise AssertionError(f"a shard failed:\n{detail()}")
            return cluster.job_field(final, "JobState") == "COMPLETED"

        wait_for(finished, 300, "the finalize job", detail)
    ran = sorted(p.name.split(".")[0].rsplit("_", 1)[0] if "finalize" in p.name else p.name for p in logs.iterdir())
    assert ran == [f"synthesize-{array}_0.out", f"synthesize-{array}_1.out", f"synthesize-finalize-{final}"]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["documents"] == len(docs) and stats["chunks"] > 2
    parts = sorted((tmp_path / "out" / "parts").glob("*.jsonl"))
    assert len(parts) == stats["chunks"]
    ids = [json.loads(line)["id"] for p in parts for line in p.read_text().splitlines()]
    assert ids == [f"corpus.jsonl:{n}" for n in range(1, len(docs) + 1)]  # every document once, in order
    assert stats["indexed"]["documents"] == len(docs)
    assert os.path.exists(tmp_path / "indexed.bin") and tokenizer.codebook_size == 64


def test_a_killed_test_run_stops_its_cluster(tmp_path):
    """SIGTERM to a process holding a cluster (a CI time-out, a cancelled run) stops its daemons."""
    script = ("import sys, time\nfrom megatron_speech.testing.slurm import LocalSlurmCluster\n"
              "LocalSlurmCluster(sys.argv[1], cpus=1).start()\nprint('up', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "slurm")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
        pids = [int((tmp_path / "slurm" / f).read_text()) for f in ("slurmctld.pid", "slurmd.pid", "munge/munged.pid")]
        assert all(alive(pid) for pid in pids)
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(30) == -signal.SIGTERM  # it still dies of the signal
        wait_for(lambda: not any(alive(pid) for pid in pids), 30, "the daemons to stop")
    finally:
        holder.kill()

"""The one job mechanism (megatron_speech.jobs) and the stages on it: preprocessing, synthesis and
speech tokenizing meet the same bad input with the same kind of error and the same error record.

The synthesis and tokenizing stages run here with stand-ins for their models (a generator that
speaks one code a word, a speech model that gives one code per 1,280 samples): what is under test
is the job around the model, and these tests take seconds.
"""

import fcntl
import json
from pathlib import Path

import numpy as np
import pytest

from megatron_speech import jobs
from megatron_speech.data.corpus import CorpusError
from megatron_speech.data.preprocess import PreprocessConfig, preprocess
from megatron_speech.speech.audio import write_wav
from megatron_speech.speech_tokenizer.tokenize import TokenizeConfig, tokenize_manifest
from megatron_speech.synthesis.generate import SpanResult
from megatron_speech.synthesis.pipeline import SynthesisConfig, run_shard
from megatron_speech.testing.multiprocess import alive
from megatron_speech.testing.tiny import FixedRateSpeechModel


class OneCodeAWord:
    """A stand-in span generator."""

    def generate(self, texts, seeds):
        return [SpanResult(tuple(len(w) % 8 for w in t.split()), 1) for t in texts]


# ---- one stage each, run the same way ----------------------------------------------------------


@pytest.fixture
def stages(tmp_path, speech_tokenizer):
    """For each stage: run(input file, output, **options) and the folder its job lives in."""
    speech_tokenizer.save(tmp_path / "tok")
    write_wav(tmp_path / "a.wav", np.ones(12800, np.int16), 16000)

    def run_preprocess(inputs: Path, out: Path, **kw):
        return preprocess(PreprocessConfig([str(inputs)], str(out), str(tmp_path / "tok"), **kw))

    def run_synthesis(inputs: Path, out: Path, **kw):
        config = SynthesisConfig([str(inputs)], str(out), str(tmp_path / "no_ckpt"), str(tmp_path / "tok"), **kw)
        return run_shard(config, generator=OneCodeAWord())

    def run_tokenize(inputs: Path, out: Path, **kw):
        model = FixedRateSpeechModel()
        return tokenize_manifest(TokenizeConfig(str(inputs), str(out), "unused.nemo", **kw), model, model.info)

    return {
        "preprocessing": (run_preprocess, lambda out: Path(f"{out}.shards"), {"text": "one two three four"}),
        "synthesis": (run_synthesis, lambda out: out, {"id": "d", "text": "one two three four five six"}),
        "speech tokenizing": (run_tokenize, lambda out: Path(f"{out}.shards"),
                              {"audio_filepath": "a.wav", "text": "one", "id": "u"}),
    }


STAGES = ["preprocessing", "synthesis", "speech tokenizing"]


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("stage", STAGES)
def test_a_malformed_record_stops_every_stage_with_file_and_line(stages, tmp_path, stage):
    run, _, good = stages[stage]
    bad = _write(tmp_path / "in.jsonl", [good, '{"text": "broken', good])
    with pytest.raises(CorpusError, match=r"in\.jsonl:2: malformed JSON"):
        run(bad, tmp_path / "out")


@pytest.mark.parametrize("stage", STAGES)
def test_a_skipped_record_gets_the_same_error_record_in_every_stage(stages, tmp_path, stage):
    run, _, good = stages[stage]
    bad = _write(tmp_path / "in.jsonl", [good, '{"text": "broken', good])
    run(bad, tmp_path / "out", on_error="skip")
    report = {"synthesis": tmp_path / "out" / "parts" / "00000.stats.json"}.get(stage)
    if report is None:  # preprocessing and tokenizing write <output>.errors.jsonl
        errors = [json.loads(x) for x in Path(f"{tmp_path / 'out'}.errors.jsonl").read_text().splitlines()]
    else:
        errors = json.loads(report.read_text())["errors"]
    assert errors == [{"file": str(bad), "record": 2, "reason": "malformed JSON (Invalid control character at)"}]


@pytest.mark.parametrize("stage", STAGES)
def test_another_jobs_folder_is_refused_by_every_stage(stages, tmp_path, stage):
    run, folder, good = stages[stage]
    inputs = _write(tmp_path / "in.jsonl", [good, good])
    folder(tmp_path / "out").mkdir(parents=True)
    (folder(tmp_path / "out") / jobs.JOB_FILE).write_text(json.dumps({"fingerprint": "0123456789abcdef"}))
    with pytest.raises(jobs.JobError, match=f"holds the output of another {stage} job .*0123456789abcdef"):
        run(inputs, tmp_path / "out")
    run(inputs, tmp_path / "out", overwrite=True)  # replaced on request
    assert not folder(tmp_path / "out").exists() or \
        json.loads((folder(tmp_path / "out") / jobs.JOB_FILE).read_text())["fingerprint"] != "0123456789abcdef"


@pytest.mark.parametrize("stage", STAGES)
def test_a_second_writer_on_the_same_shard_is_refused(stages, tmp_path, stage):
    run, folder, good = stages[stage]
    inputs = _write(tmp_path / "in.jsonl", [good, good])
    lock = folder(tmp_path / "out") / "locks" / "shard-0-of-1.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:  # another process writing this shard
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(jobs.JobError, match=r"shard-0-of-1 is being written by another process"):
            run(inputs, tmp_path / "out")
    run(inputs, tmp_path / "out")  # the lock went with its holder


# ---- the mechanism itself ----------------------------------------------------------------------


def test_overwrite_waits_for_no_one_and_refuses_a_folder_in_use(tmp_path):
    running = jobs.Job(tmp_path / "job", "test", "aaaa")
    running.claim()
    with running.lock("shard-0-of-1"):
        with pytest.raises(jobs.JobError, match="shard-0-of-1 is being written by another process"):
            jobs.Job(tmp_path / "job", "test", "bbbb").claim(overwrite=True)
    jobs.Job(tmp_path / "job", "test", "bbbb").claim(overwrite=True)  # free now: replaced
    assert json.loads((tmp_path / "job" / jobs.JOB_FILE).read_text())["fingerprint"] == "bbbb"


def test_a_chunk_is_complete_only_when_its_marker_is(tmp_path):
    job = jobs.Job(tmp_path / "job", "test", "f")
    job.claim()
    chunk = jobs.Chunk(0, "x", 0, None)

    def fail(tmp):
        tmp["txt"].write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        job.run_chunk(chunk, ("txt",), fail)
    assert not job.part(chunk, "txt").exists() and job.missing([chunk]) == [0]

    def write(tmp):
        tmp["txt"].write_text("whole")
        return {"records": 1, "errors": []}

    assert job.run_chunk(chunk, ("txt",), write) == {"records": 1, "errors": []}
    assert job.part(chunk, "txt").read_text() == "whole" and job.missing([chunk]) == []
    assert job.run_chunk(chunk, ("txt",), fail) == {"records": 1, "errors": []}  # complete: not run again


def test_chunks_cover_every_line_once_and_shards_split_them(tmp_path):
    corpus = _write(tmp_path / "c.jsonl", [{"text": f"line {i}"} for i in range(100)])
    chunks = jobs.plan_chunks([str(corpus)], 200)
    assert len(chunks) > 5
    from megatron_speech.data.corpus import read_records

    numbers = [n for c in chunks for n, _ in read_records(c.path, c.start, c.end)]
    assert numbers == list(range(1, 101))
    shards = [jobs.shard_chunks(chunks, i, 3) for i in range(3)]
    assert sorted(c.index for s in shards for c in s) == [c.index for c in chunks]
    with pytest.raises(ValueError, match="outside"):
        jobs.shard_chunks(chunks, 3, 3)


def test_slurm_array_variables_name_the_shard():
    assert jobs.shard_from_environment({}) == (0, 1)
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert jobs.shard_from_environment(env) == (2, 4)


def test_stats_sum_counts_and_keep_errors_in_order():
    one = {"documents": 2, "tokens": 10, "errors": [{"file": "a", "record": 1, "reason": "x"}]}
    two = {"documents": 3, "tokens": 5, "errors": [{"file": "a", "record": 9, "reason": "y"}]}
    total = jobs.sum_stats([one, two])
    assert total["documents"] == 5 and total["tokens"] == 15 and [e["record"] for e in total["errors"]] == [1, 9]


def test_children_forked_by_a_job_die_with_it(tmp_path):
    """kill -9 of a process that forked helpers (a training rank's checkpoint writers) kills them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import os, sys, time\nfrom megatron_speech import jobs\njobs.children_die_with_this_process()\n"
              "pid = os.fork()\nif pid == 0:\n    time.sleep(600)\n    os._exit(0)\n"
              "print(pid, flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the forked child outlived its killed parent"

"""Checkpoints: exact resume after an exit signal, resharding TP=2 -> TP=1, refusing bad ones, and
averaging a run's last ones."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from megatron_speech.testing.tiny import tiny_train_config

from megatron_speech.testing.multiprocess import run_processes
from megatron_speech.checkpoints import megatron as checkpoint
from megatron_speech.training.config import TrainConfig

STEPS = 8


def train_job(values: dict, signal_after: int | None = None) -> dict:
    """Train in this process; with ``signal_after``, rank 0 alone gets SIGTERM after that many steps."""
    import torch.distributed as dist

    from megatron_speech.parallel import shutdown
    from megatron_speech.training import loop

    if signal_after is not None:
        real_step, calls = loop.train_step, []

        def step_then_signal(*args, **kwargs):
            result = real_step(*args, **kwargs)
            calls.append(1)
            if len(calls) == signal_after and dist.get_rank() == 0:
                signal.raise_signal(signal.SIGTERM)
            return result

        loop.train_step = step_then_signal
    outcome = loop.pretrain(TrainConfig.from_dict(values))
    shutdown()
    return {"losses": {step: r.loss for step, r in outcome.results.items()}, "preempted": outcome.preempted}


def _config(root, ckpt, tp: int = 1, **schedule) -> dict:
    values = tiny_train_config(root, **{"steps": STEPS, **schedule})
    values["checkpoint"] = {"dir": str(ckpt)}
    values["parallel"] = {"tensor_model_parallel_size": tp}
    return values


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    root, _ = prepared
    return run_processes(train_job, 2, _config(root, tmp_path_factory.mktemp("full")))[0]["losses"]


@pytest.mark.slow  # two 2-process runs; test_tp2_checkpoint_resumes_at_tp1 keeps resume in the default suite
def test_signal_saves_and_resume_continues_the_same_trajectory(prepared, tmp_path, uninterrupted):
    root, _ = prepared
    values = _config(root, tmp_path / "ckpt")
    first = run_processes(train_job, 2, values, 3)
    assert all(r["preempted"] for r in first)  # the signal reached rank 0 only; both stopped
    assert sorted(first[0]["losses"]) == [1, 2, 3]
    assert checkpoint.latest_step(tmp_path / "ckpt") == 3
    second = run_processes(train_job, 2, values)[0]
    assert sorted(second["losses"]) == list(range(4, STEPS + 1))
    resumed = {**first[0]["losses"], **second["losses"]}
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-5), step


def test_tp2_checkpoint_resumes_at_tp1(prepared, tmp_path, uninterrupted):
    root, _ = prepared
    tp2 = _config(root, tmp_path / "ckpt", tp=2)
    first = run_processes(train_job, 2, tp2, 4)[0]
    tp1 = _config(root, tmp_path / "ckpt", tp=1)
    second = run_processes(train_job, 1, tp1)[0]  # one process: TP=1, DP=1, same global batch
    assert sorted(second["losses"]) == list(range(5, STEPS + 1))
    resumed = {**first["losses"], **second["losses"]}
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-4), step


@pytest.fixture(scope="module")
def saved(prepared, tmp_path_factory):
    root, _ = prepared
    ckpt = tmp_path_factory.mktemp("saved")
    run_processes(train_job, 1, _config(root, ckpt, steps=2))
    return ckpt


def setup_errors(scenarios: dict[str, dict]) -> dict[str, str]:
    """In one process (one import of torch and megatron for all): each run's error, or "" for a run
    that trained. Every refusal here must come at setup, before a step."""
    from megatron_speech.parallel import shutdown
    from megatron_speech.training import loop

    errors = {}
    for name, values in scenarios.items():
        try:
            loop.pretrain(TrainConfig.from_dict(values))
            errors[name] = ""
        except Exception as exc:  # noqa: BLE001 - the message is what is under test
            errors[name] = f"{type(exc).__name__}: {exc}"
        finally:
            shutdown()
    return errors


@pytest.fixture(scope="module")
def refusals(prepared, saved, tmp_path_factory, text_tokenizer_file):
    """Every way a run must refuse its checkpoint folder at setup, run together: name -> message."""
    import fcntl

    from megatron_speech.lm_tokenizer import SpeechTextTokenizer

    root, _ = prepared
    tmp = tmp_path_factory.mktemp("refusals")
    scenarios, folders = {}, {}

    def scenario(name: str, ckpt, **changes) -> dict:
        values = _config(root, ckpt, steps=4)
        for section, fields in changes.items():
            values[section].update(fields)
        scenarios[name], folders[name] = values, ckpt
        return values

    def copy(name: str):
        shutil.copytree(saved, tmp / name)
        return tmp / name

    other = tmp / "other_tokenizer"
    SpeechTextTokenizer.from_text_tokenizer(text_tokenizer_file, codebook_size=32).save(other)
    vocab = scenario("vocab", copy("vocab"))
    vocab["tokenizer"] = str(other)
    vocab["data"]["sources"] = []  # the checkpoint check must come before any data is read
    scenario("shape", copy("shape"), model={"hidden_size": 32})
    scenario("rotary_base", copy("rotary_base"), model={"rotary_base": 500000})
    ckpt = copy("corrupt_shard")
    shard = max((ckpt / "iter_0000002").glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    scenario("corrupt_shard", ckpt)
    ckpt = copy("corrupt_metadata")
    (ckpt / "iter_0000002" / checkpoint.METADATA).write_text("{not json")
    scenario("corrupt_metadata", ckpt)
    (tmp / "a_file").write_text("")
    scenario("a_file", tmp / "a_file")
    scenario("under_a_file", tmp / "a_file" / "sub")
    scenario("in_use", copy("in_use"))
    with open(tmp / "in_use" / ".lock", "w") as held:  # another training run holds this folder
        fcntl.flock(held, fcntl.LOCK_EX)
        errors = run_processes(setup_errors, 1, scenarios)[0]
    return errors, folders


def test_vocab_mismatch_is_refused(refusals):
    errors, folders = refusals
    assert "vocabulary mismatch" in errors["vocab"] and f"{folders['vocab']}/iter_0000002" in errors["vocab"]


def test_model_shape_mismatch_is_refused(refusals):
    assert "model differs from the run's" in refusals[0]["shape"] and "hidden_size" in refusals[0]["shape"]


def test_a_changed_function_field_is_refused_too(refusals):
    """Same shapes, another function: rotary_base loads without error and computes something else."""
    assert "'rotary_base': (10000, 500000)" in refusals[0]["rotary_base"]


def test_corrupt_checkpoint_is_refused(refusals):
    assert "iter_0000002: cannot be loaded" in refusals[0]["corrupt_shard"]


def test_corrupt_metadata_is_refused(refusals):
    assert "corrupt metadata" in refusals[0]["corrupt_metadata"]


def test_a_second_run_on_the_same_checkpoint_folder_is_refused(refusals):
    errors, folders = refusals
    assert f"checkpoint folder {folders['in_use']} is in use by another process" in errors["in_use"]


@pytest.mark.parametrize("name, expected", [
    ("a_file", "the checkpoint path is not a folder"),
    ("under_a_file", "the checkpoint folder cannot be written (Not a directory)"),
])
def test_an_unusable_checkpoint_path_is_found_at_setup(refusals, name, expected):
    errors, folders = refusals
    assert f"{folders[name]}: {expected}" in errors[name]


def train_job_disk_full(values: dict) -> dict:
    """``train_job`` on a disk that fills at the first save."""
    import errno

    from megatron.core import dist_checkpointing

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    dist_checkpointing.save = full
    return train_job(values)


def test_a_failed_save_names_the_checkpoint(prepared, tmp_path):
    root, _ = prepared
    with pytest.raises(RuntimeError) as info:
        run_processes(train_job_disk_full, 1, _config(root, tmp_path / "ckpt", steps=2))
    assert f"{tmp_path / 'ckpt' / 'iter_0000002.tmp'}: saving step 2 failed: OSError: [Errno 28] No space left" \
        in str(info.value)


def test_metadata_records_step_layout_and_vocabulary(saved, prepared):
    _, tokenizer = prepared
    info = json.loads((saved / "iter_0000002" / checkpoint.METADATA).read_text())
    assert info["step"] == 2 and info["vocab_size"] == tokenizer.vocab_size
    assert info["layout"] == {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
                              "data_parallel_size": 1}
    assert not list(saved.glob("*.tmp"))


# ---- averaging a run's last checkpoints ------------------------------------------------------


def weights_at(checkpoints: list[tuple[str, int | None]], tokenizer_dir: str) -> list[dict]:
    """Each (root, step)'s full weights and metadata, loaded as inference loads them."""
    from megatron_speech import parallel as par
    from megatron_speech.checkpoints.trained import load_trained_model
    from megatron_speech.lm_tokenizer import SpeechTextTokenizer
    from megatron_speech.models.sharding import gather_full_state_dict

    tokenizer = SpeechTextTokenizer.load(tokenizer_dir)
    par.init_distributed(par.ParallelConfig())
    out = []
    for root, step in checkpoints:
        model, _, info = load_trained_model(root, tokenizer, step)
        out.append({"weights": gather_full_state_dict(model), "metadata": info.metadata, "step": info.step})
    par.shutdown()
    return out


def _average(*args: str) -> subprocess.CompletedProcess:
    tool = Path(__file__).resolve().parents[1] / "tools" / "average_checkpoints.py"
    return subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def every_step(prepared, tmp_path_factory):
    """A run saved at each of its 3 steps, with a torn save and an incomplete folder beside them."""
    root, _ = prepared
    ckpt = tmp_path_factory.mktemp("every_step")
    values = _config(root, ckpt, steps=3)
    values["checkpoint"]["save_interval"] = 1
    run_processes(train_job, 1, values)
    (ckpt / "iter_0000004.tmp").mkdir()
    (ckpt / "iter_0000005").mkdir()  # no metadata: not a complete checkpoint
    return ckpt


def test_the_mean_of_the_last_checkpoints_is_a_checkpoint_of_their_mean_weights(every_step, prepared, tmp_path):
    from megatron_speech.checkpoints.average import complete_steps

    root, _ = prepared
    assert complete_steps(every_step) == [1, 2, 3]
    result = _average("--checkpoint", str(every_step), "--tokenizer", str(root / "tokenizer"),
                      "--last", "2", "--output", str(tmp_path / "avg"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the mean of steps [2, 3]" in result.stdout
    two, three, mean = run_processes(weights_at, 1, [(str(every_step), 2), (str(every_step), 3),
                                                     (str(tmp_path / "avg"), None)], str(root / "tokenizer"))[0]
    assert mean["step"] == 3 and checkpoint.latest_step(tmp_path / "avg") == 3
    assert mean["metadata"]["weights_only"] and mean["metadata"]["averaged_from"]["steps"] == [2, 3]
    assert mean["metadata"]["model"] == three["metadata"]["model"]
    assert sorted(mean["weights"]) == sorted(three["weights"])
    moved = [name for name in three["weights"] if not (two["weights"][name] == three["weights"][name]).all()]
    assert len(moved) > len(three["weights"]) // 2  # a training step apart: the mean is not either one
    for name, weight in mean["weights"].items():
        expected = (two["weights"][name].double() + three["weights"][name].double()) / 2
        assert torch.allclose(weight.double(), expected, atol=1e-7), name


def test_averaging_refuses_missing_steps_and_its_own_folder(every_step, prepared):
    root, _ = prepared
    common = ["--checkpoint", str(every_step), "--tokenizer", str(root / "tokenizer")]
    too_many = _average(*common, "--last", "4", "--output", str(every_step.parent / "avg4"))
    assert too_many.returncode != 0
    assert f"{every_step}: asked for the last 4 checkpoints, it holds 3: [1, 2, 3]" in too_many.stderr
    absent = _average(*common, "--steps", "2", "7", "--output", str(every_step.parent / "avg7"))
    assert absent.returncode != 0 and "iter_0000007: not a complete checkpoint" in absent.stderr
    into_itself = _average(*common, "--last", "2", "--output", str(every_step))
    assert into_itself.returncode != 0 and "must not be the checkpoints' own folder" in into_itself.stderr
    assert checkpoint.latest_step(every_step) == 3 and not (every_step / "iter_0000007").exists()

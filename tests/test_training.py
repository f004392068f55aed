"""The default pipeline end to end: corpus → tokenizer → indexed binaries → Megatron pre-training."""

import json
import math

import pytest

from megatron_speech.data.indexed import read_metadata
from megatron_speech.testing.multiprocess import run_processes
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.training.config import TrainConfig
from megatron_speech.training.data import DataConfig, DataSource, check_sources
from megatron_speech.testing.tiny import tiny_train_config


def _config(root, **schedule) -> dict:
    return tiny_train_config(root, **schedule)


def train(values: dict) -> list[float]:
    from megatron_speech.parallel import shutdown
    from megatron_speech.training.loop import pretrain

    outcome = pretrain(TrainConfig.from_dict(values))
    losses = [outcome.results[step].loss for step in sorted(outcome.results)]
    shutdown()
    return losses


def test_preprocessed_metadata_names_tokenizer(prepared):
    root, tokenizer = prepared
    meta = read_metadata(root / "data" / "text")
    assert meta["tokenizer_fingerprint"] == tokenizer.fingerprint()
    assert meta["layout"] == "text" and meta["dtype"] == "uint16" and meta["num_tokens"] > 10_000


def test_data_parallel_training_loss_falls(prepared, tmp_path):
    root, _ = prepared
    metrics = tmp_path / "run" / "metrics.jsonl"  # its folder does not exist yet
    rank0, rank1 = run_processes(train, 2, _config(root, metrics_file=str(metrics), eval_interval=15))
    assert rank0 == rank1  # every rank reports the global loss
    first, last = sum(rank0[:5]) / 5, sum(rank0[-5:]) / 5
    assert last < first - 0.5, (first, last)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, 31)) and [r["loss"] for r in steps] == rank0
    valid = [r for r in records if r["split"] == "valid"]  # the validations are in the same file
    assert [r["step"] for r in valid] == [15, 30], valid
    for r in valid:  # one source: its loss is the whole loss, over different batches than training's
        assert math.isfinite(r["loss"]) and r["source_losses"]["text"] == pytest.approx(r["loss"], rel=1e-6)
        assert r["loss"] != steps[r["step"] - 1]["loss"]


def _check(root, tokenizer, **source):
    check_sources(DataConfig(sources=[DataSource(**{"prefix": str(root / "data" / "text"), **source})]), tokenizer)


def test_missing_dataset_is_reported(prepared):
    root, tokenizer = prepared
    with pytest.raises(FileNotFoundError, match="nowhere.bin"):
        _check(root, tokenizer, prefix=str(root / "nowhere"))


@pytest.mark.parametrize("weight", [0.0, -1.0])
def test_non_positive_weight_is_rejected(prepared, weight):
    root, tokenizer = prepared
    with pytest.raises(ValueError, match="blend weight must be > 0"):
        _check(root, tokenizer, weight=weight)


def test_foreign_tokenizer_is_rejected(prepared, text_tokenizer_file):
    root, _ = prepared
    other = SpeechTextTokenizer.from_text_tokenizer(text_tokenizer_file, codebook_size=128)
    with pytest.raises(ValueError, match="re-run preprocessing"):
        _check(root, other)


def test_batch_that_does_not_divide_is_rejected(prepared):
    root, _ = prepared
    with pytest.raises(RuntimeError, match="not a multiple of micro_batch_size"):
        run_processes(train, 1, _config(root, global_batch_size=6))

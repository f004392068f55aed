"""The default pipeline end to end: corpus → tokenizer → indexed binaries → Megatron pre-training."""

import json

import pytest

from megatron_speech.data.default_corpus import default_documents
from megatron_speech.data.indexed import read_metadata
from megatron_speech.data.preprocess import PreprocessConfig, preprocess
from megatron_speech.testing.multiprocess import run_processes
from megatron_speech.tokenizer import SpeechTextTokenizer
from megatron_speech.training.config import TrainConfig
from megatron_speech.training.data import DataConfig, DataSource, check_sources


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, text_tokenizer_file):
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = SpeechTextTokenizer.from_text_tokenizer(text_tokenizer_file, codebook_size=64)
    tokenizer.save(root / "tokenizer")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in default_documents()[:800]))
    preprocess(PreprocessConfig([str(corpus)], str(root / "data" / "text"), str(root / "tokenizer")))
    return root, tokenizer


def _config(root, **schedule) -> dict:
    return {
        "tokenizer": str(root / "tokenizer"),
        "data": {"sources": [{"prefix": str(root / "data" / "text")}], "seq_length": 64},
        "model": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
                  "ffn_hidden_size": 160, "max_sequence_length": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "schedule": {"steps": 30, "micro_batch_size": 4, "global_batch_size": 8, "log_interval": 10,
                     "eval_interval": 0, **schedule},
    }


def train(values: dict) -> list[float]:
    from megatron_speech.parallel import shutdown
    from megatron_speech.training.loop import pretrain

    losses = [r.loss for r in pretrain(TrainConfig.from_dict(values))]
    shutdown()
    return losses


def test_preprocessed_metadata_names_tokenizer(prepared):
    root, tokenizer = prepared
    meta = read_metadata(root / "data" / "text")
    assert meta["tokenizer_fingerprint"] == tokenizer.fingerprint()
    assert meta["layout"] == "text" and meta["dtype"] == "uint16" and meta["num_tokens"] > 10_000


def test_data_parallel_training_loss_falls(prepared):
    root, _ = prepared
    rank0, rank1 = run_processes(train, 2, _config(root))
    assert rank0 == rank1  # every rank reports the global loss
    first, last = sum(rank0[:5]) / 5, sum(rank0[-5:]) / 5
    assert last < first - 0.5, (first, last)


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

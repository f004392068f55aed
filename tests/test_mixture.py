"""The data mixture: blend weights, per-source loss policies, per-source losses, mixture files."""

from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from megatron_speech.testing.tiny import tiny_train_config

from megatron_speech.testing.multiprocess import run_processes
from megatron_speech.training.config import TrainConfig
from megatron_speech.training.data import DataConfig, build_datasets, microbatches, policy_mask


def _data_config(sources: list) -> DataConfig:
    return DataConfig.from_dict({"sources": sources, "seq_length": 64, "split": "100,0,0"})


def test_blend_weights_are_respected(blend):
    _, tokenizer, sources = blend
    train, _ = build_datasets(_data_config(sources), tokenizer, train_samples=3000, valid_samples=0)
    counts = Counter(int(train[i]["dataset_id"]) for i in range(len(train)))
    total = sum(counts.values())
    weights = np.array([s["weight"] for s in sources])
    for source_id, expected in enumerate(weights / weights.sum()):
        assert counts[source_id] / total == pytest.approx(expected, abs=0.01), (source_id, counts)


def test_audio_policy_keeps_loss_on_speech_targets_only(blend):
    _, tokenizer, sources = blend
    train, _ = build_datasets(_data_config(sources), tokenizer, train_samples=256, valid_samples=0)
    config = _data_config(sources)
    lo, hi = tokenizer.audio_offset, tokenizer.audio_offset + tokenizer.codebook_size
    seen = Counter()
    for batch in microbatches(train, 0, 64, 16, 0, 1, config.sources, tokenizer):
        for labels, mask, source, marked in zip(batch["labels"], batch["loss_mask"], batch["source"],
                                                batch["speech_target"]):
            speech = ((labels >= lo) & (labels < hi)) | (labels == tokenizer.eoa)
            assert bool((marked == speech).all())  # the targets the per-target losses call speech
            seen[int(source)] += 1
            if config.sources[int(source)].loss == "audio":
                assert bool(speech.any())
                assert bool((mask.bool() == speech).all())  # every speech target, and nothing else
            else:
                assert bool((mask == 1).all())
    assert set(seen) == {0, 1, 2}


def test_text_policy_is_the_complement():
    class Ids:  # the four ids policy_mask reads from a tokenizer
        audio_offset, codebook_size, boa, eoa = 100, 10, 110, 111

    labels = np.array([5, 110, 100, 109, 111, 7, 112])
    assert policy_mask(labels, "audio", Ids).tolist() == [0, 0, 1, 1, 1, 0, 0]
    assert policy_mask(labels, "text", Ids).tolist() == [1, 0, 0, 0, 0, 1, 1]
    assert policy_mask(labels, "all", Ids).tolist() == [1] * 7


def test_unknown_loss_policy_is_rejected():
    with pytest.raises(ValueError, match="loss must be one of"):
        _data_config([{"prefix": "x", "loss": "speech"}])


def per_source_job(values: dict) -> list:
    from megatron_speech.parallel import shutdown
    from megatron_speech.training.loop import pretrain

    outcome = pretrain(TrainConfig.from_dict(values))
    shutdown()
    return [outcome.results[s] for s in sorted(outcome.results)]


def test_per_source_losses_add_up_to_the_batch_loss(blend):
    root, _, sources = blend
    values = tiny_train_config(root, steps=3)
    values["data"]["sources"] = sources
    for result in run_processes(per_source_job, 2, values)[0]:
        assert all(n > 0 for n in result.source_tokens), result
        assert sum(result.source_tokens) == result.num_tokens
        pooled = sum(l * n for l, n in zip(result.source_losses, result.source_tokens)) / result.num_tokens
        assert pooled == pytest.approx(result.loss, rel=1e-6)
        # split by target: text has no speech targets, TTS under the audio policy no text targets,
        # interleaved both; the two parts pool to the source's loss
        (text, tts, interleaved) = result.source_target_losses
        assert text["speech"] is None and text["text"] is not None
        assert tts["text"] is None and tts["speech"] is not None
        assert interleaved["text"] is not None and interleaved["speech"] is not None
        t, n_t, sp, n_sp = result.source_sums[2]
        assert n_t > 0 and n_sp > 0
        assert (interleaved["text"] * n_t + interleaved["speech"] * n_sp) / (n_t + n_sp) == pytest.approx(
            result.source_losses[2], rel=1e-6)


def test_loss_is_split_by_source_and_target():
    """Hand-made per-token losses: each source's sums land in its row, text and speech apart."""
    from megatron_speech.training.step import StepResult, _loss_func

    losses = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    speech = torch.tensor([[False, True, True, True], [False, False, False, True]])
    _, count, reports = _loss_func(mask, torch.tensor([1, 0]), speech, 3, losses)
    assert int(count) == 7
    rows = reports["source loss"].tolist()
    assert rows == [[18.0, 3.0, 8.0, 1.0], [1.0, 1.0, 5.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
    result = StepResult(loss=36 / 7, num_tokens=7, source_sums=rows)
    assert result.source_target_losses[1] == {"text": 1.0, "speech": 2.5}
    assert result.source_losses == [26 / 4, 6 / 3, None]
    assert result.source_tokens == [4, 3, 0]


def test_mixture_file_is_read_and_inline_keys_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(
        {"split": "90,10,0", "seq_length": 512, "sources": [{"prefix": "a", "weight": 0.3}, {"prefix": "b"}]}))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"tokenizer": "t", "data": {"include": "mix.yaml", "seq_length": 256}}))
    config = TrainConfig.from_yaml(tmp_path / "run.yaml", {"schedule.steps": 7})
    assert [(s.prefix, s.weight) for s in config.data.sources] == [("a", 0.3), ("b", 1.0)]
    assert (config.data.split, config.data.seq_length, config.schedule.steps) == ("90,10,0", 256, 7)

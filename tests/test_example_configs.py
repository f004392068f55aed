"""The shipped training configs parse and have the shapes they claim; hardware switches fail clearly."""

from pathlib import Path

import pytest

from megatron_speech import backends
from megatron_speech.models.config import SpeechGPTConfig
from megatron_speech.parallel import ParallelConfig
from megatron_speech.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "examples").glob("*/configs/*.yaml")) + [REPO / "examples/tiny/pretrain.yaml"]


def parameter_count(model: SpeechGPTConfig, vocab_size: int) -> int:
    head_dim = model.hidden_size // model.num_attention_heads
    attention = model.hidden_size * head_dim * (2 * model.num_attention_heads + 2 * model.num_query_groups)
    mlp = 3 * model.hidden_size * model.ffn_hidden_size
    embeddings = vocab_size * model.hidden_size * (1 if model.tie_embeddings else 2)
    return model.num_layers * (attention + mlp + 2 * model.hidden_size) + embeddings


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_fits_its_parallel_layout(path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = TrainConfig.from_yaml(path)
    m, p = config.model, config.parallel
    assert m.num_attention_heads % p.tensor_model_parallel_size == 0
    assert m.num_query_groups % p.tensor_model_parallel_size == 0
    assert m.num_layers % p.pipeline_model_parallel_size == 0
    assert config.data.seq_length <= m.max_sequence_length
    assert config.data.sources and all(s.weight > 0 for s in config.data.sources)


@pytest.mark.parametrize("name, billions", [("pretrain/configs/speech_gpt_1b", (1.2, 1.6)),
                                            ("pretrain/configs/glm4_9b", (9.0, 10.5)),
                                            ("synthesize/configs/text_to_token_1b5", (1.4, 1.8))])
def test_model_sizes(name, billions, monkeypatch):
    monkeypatch.chdir(REPO)
    config = TrainConfig.from_yaml(REPO / "examples" / f"{name}.yaml")
    count = parameter_count(config.model, 151_552 + 16_384 + 7) / 1e9
    assert billions[0] <= count <= billions[1], count


@pytest.mark.skipif(backends.available().fp8, reason="this machine can run FP8")
def test_fp8_without_support_names_the_missing_piece():
    with pytest.raises(RuntimeError, match="needs Transformer Engine on a Hopper"):
        SpeechGPTConfig(fp8="hybrid").to_transformer_config(ParallelConfig())


@pytest.mark.skipif(backends.available().transformer_engine, reason="Transformer Engine is installed")
def test_transformer_engine_requested_but_missing_is_an_error():
    with pytest.raises(RuntimeError, match="Transformer Engine is not importable"):
        SpeechGPTConfig(transformer_impl="transformer_engine").uses_transformer_engine()

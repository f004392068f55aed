"""Megatron <-> Hugging Face: logits match transformers, round trips are exact, HF init keeps text logits."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from megatron_speech.testing.tiny import tiny_train_config

from megatron_speech.checkpoints.hf import read_hf_checkpoint
from megatron_speech.testing.multiprocess import run_processes
from megatron_speech.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SEQ = 24


def _tokens(vocab_size: int, count: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab_size, (count, SEQ + 1), generator=torch.Generator().manual_seed(7))


def train_and_reference(values: dict, tokens: torch.Tensor) -> dict:
    """Train two steps with a checkpoint, reload it in the same layout, and report logits and loss."""
    from megatron_speech import parallel as par
    from megatron_speech.models.gpt import build_model, full_logits
    from megatron_speech.lm_tokenizer import SpeechTextTokenizer
    from megatron_speech.checkpoints import megatron as checkpoint
    from megatron_speech.training.loop import pretrain
    from megatron_speech.training.step import forward_backward

    config = TrainConfig.from_dict(values)
    pretrain(config)
    tokenizer = SpeechTextTokenizer.load(config.tokenizer)
    model = build_model(config.model, tokenizer.vocab_size, config.parallel)
    checkpoint.load(checkpoint.read_info(config.checkpoint.dir), [model])
    model.eval()
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(tokens.shape[0], SEQ),
             "position_ids": torch.arange(SEQ).expand(tokens.shape[0], SEQ)}
    with torch.no_grad():
        loss = forward_backward([model], iter([batch]), 1, SEQ, tokens.shape[0], forward_only=True).loss
        logits = full_logits(model, batch["tokens"])  # None on a pipeline stage that is not the last
    par.shutdown()
    return {"loss": loss, "logits": logits}


def _convert(*args: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), *args],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]


def _hf_outputs(hf_dir: Path, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    return logits, loss.item()


@pytest.fixture(scope="module")
def converted(prepared, tmp_path_factory):
    """For each source layout: the HF folder and the reference logits/loss of the Megatron model."""
    root, tokenizer = prepared
    tokens = _tokens(tokenizer.vocab_size)
    out = {}
    for name, tp, pp in (("tp1", 1, 1), ("tp2", 2, 1), ("pp2", 1, 2)):
        work = tmp_path_factory.mktemp(name)
        values = tiny_train_config(root, steps=2, global_batch_size=8)
        values["model"]["max_sequence_length"] = 64
        values["parallel"] = {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp}
        values["checkpoint"] = {"dir": str(work / "ckpt")}
        reference = run_processes(train_and_reference, tp * pp, values, tokens)[-1]  # last stage has the loss
        _convert("megatron-to-hf", "--checkpoint", str(work / "ckpt"), "--tokenizer", str(root / "tokenizer"),
                 "--output", str(work / "hf"))
        out[name] = (work, reference)
    return out, tokens


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2"])
def test_transformers_matches_megatron(converted, layout):
    out, tokens = converted
    work, reference = out[layout]
    logits, loss = _hf_outputs(work / "hf", tokens)
    assert loss == pytest.approx(reference["loss"], abs=1e-4)
    assert (logits - reference["logits"]).abs().max().item() <= 1e-4


def test_converted_tokenizer_has_speech_tokens(converted, prepared):
    from transformers import AutoTokenizer

    _, tokenizer = prepared
    work, _ = converted[0]["tp1"]
    hf_tokenizer = AutoTokenizer.from_pretrained(work / "hf")
    assert len(hf_tokenizer) == tokenizer.vocab_size
    ids = tokenizer.encode([tokenizer.decode([5, 6])[0]]) + list(tokenizer.audio_ids([3, 0, 63]))
    assert hf_tokenizer.convert_ids_to_tokens(ids[-3:]) == ["<|audio_3|>", "<|audio_0|>", "<|audio_63|>"]
    assert hf_tokenizer.eos_token_id == tokenizer.eod


@pytest.mark.slow  # a second conversion both ways; test_transformers_matches_megatron keeps conversion in the default suite
def test_hf_to_megatron_to_hf_is_lossless(converted, prepared, tmp_path):
    root, _ = prepared
    work, _ = converted[0]["tp1"]
    _convert("hf-to-megatron", "--hf", str(work / "hf"), "--tokenizer", str(root / "tokenizer"),
             "--output", str(tmp_path / "megatron"))
    _convert("megatron-to-hf", "--checkpoint", str(tmp_path / "megatron"), "--tokenizer", str(root / "tokenizer"),
             "--output", str(tmp_path / "hf"))
    config_a, tensors_a = read_hf_checkpoint(work / "hf")
    config_b, tensors_b = read_hf_checkpoint(tmp_path / "hf")
    assert config_a == config_b
    assert tensors_a.keys() == tensors_b.keys()
    for name in tensors_a:
        assert torch.equal(tensors_a[name], tensors_b[name]), name


# ---------------------------------------------------------------- initialising from an HF text LM


def expanded_text_logits(hf_dir: str, tokenizer_dir: str, tp: int, tokens: torch.Tensor) -> torch.Tensor:
    from megatron_speech import parallel as par
    from megatron_speech.checkpoints.hf import model_config_from_hf
    from megatron_speech.models.gpt import build_model, full_logits
    from megatron_speech.lm_tokenizer import SpeechTextTokenizer
    from megatron_speech.training.config import InitConfig
    from megatron_speech.training.initial_weights import initialise

    import json

    parallel = par.ParallelConfig(tensor_model_parallel_size=tp)
    par.init_distributed(parallel)
    tokenizer = SpeechTextTokenizer.load(tokenizer_dir)
    model_config = model_config_from_hf(json.loads(Path(hf_dir, "config.json").read_text()))
    model = build_model(model_config, tokenizer.vocab_size, parallel)
    initialise(model, InitConfig(hf_checkpoint=hf_dir), model_config, tokenizer)
    with torch.no_grad():
        logits = full_logits(model.eval(), tokens)
    par.shutdown()
    return logits


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def text_lm(request, tmp_path_factory, speech_tokenizer):
    """A random tiny HF text LM whose embeddings cover the text tokenizer plus 5 padding rows."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=speech_tokenizer.text_vocab_size + 5, hidden_size=64, intermediate_size=160,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=50000.0,
                 max_position_embeddings=64)
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if request.param == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    model = model_cls(config_cls(**shape)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mapping mistake shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    tokenizer_dir = path / "speech_tokenizer"
    speech_tokenizer.save(tokenizer_dir)
    return path, tokenizer_dir, model


@pytest.mark.parametrize("tp", [1, 2])
def test_hf_init_keeps_text_logits(text_lm, speech_tokenizer, tp):
    path, tokenizer_dir, hf_model = text_lm
    text_vocab = speech_tokenizer.text_vocab_size
    tokens = _tokens(text_vocab)[:, :SEQ]
    with torch.no_grad():
        expected = hf_model(tokens).logits[..., :text_vocab]
    logits = run_processes(expanded_text_logits, tp, str(path), str(tokenizer_dir), tp, tokens)[0]
    assert logits.shape[-1] == speech_tokenizer.vocab_size
    assert (logits[..., :text_vocab] - expected).abs().max().item() <= 1e-4

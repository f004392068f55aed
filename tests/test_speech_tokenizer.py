"""The NeMo speech tokenizer: forward/backward, exact token rate, quantizer upkeep, NeMo checkpoints."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from megatron_speech.speech.quantizer import VectorQuantizerEMA

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("nemo.collections.asr", reason="nemo_toolkit[asr] is installed by scripts/setup.sh")


def tiny_config(token_rate: float = 12.5):
    cfg = OmegaConf.load(REPO / "examples/speech_tokenizer/conf/mini.yaml").model
    cfg.token_rate = token_rate
    cfg.encoder.update(n_layers=1, d_model=32, n_heads=2, conv_kernel_size=5)
    cfg.post_encoder.update(feat_in=32, n_layers=1, d_model=32, n_heads=2, conv_kernel_size=3)
    cfg.quantizer.update(num_codes=16, dim=8)
    cfg.train_ds = cfg.validation_ds = None
    return cfg


def _model(token_rate: float = 12.5):
    from megatron_speech.speech.tokenizer_model import SpeechTokenizerModel

    torch.manual_seed(0)
    return SpeechTokenizerModel(tiny_config(token_rate))


@pytest.mark.parametrize("token_rate, seconds, tokens", [(12.5, 10.0, 125), (12.5, 3.3, 41), (25.0, 10.0, 250)])
def test_token_rate_is_exact(token_rate, seconds, tokens):
    model = _model(token_rate).eval()
    samples = int(16000 * seconds)
    codes = model.tokenize(torch.randn(2, samples) * 0.1, torch.tensor([samples, samples // 2]))
    assert [len(c) for c in codes] == [tokens, samples // 2 // int(16000 / token_rate)]
    assert all(0 <= c < 16 for seq in codes for c in seq)


def test_forward_backward_reaches_every_trained_part():
    model = _model().train()
    audio = torch.randn(3, 24000) * 0.1
    lengths = torch.tensor([24000, 20000, 16000])
    targets = torch.randint(0, 27, (3, 8))
    loss = model.training_step((audio, lengths, targets, torch.tensor([8, 6, 5])), 0)
    loss.backward()
    for part in (model.encoder, model.pre_quantizer, model.post_quantizer, model.post_encoder, model.ctc_head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), type(part).__name__
    assert torch.isfinite(loss)


def test_dead_codes_are_restarted_at_batch_frames():
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(num_codes=64, dim=4, decay=0.5, dead_code_threshold=0.5).train()
    frames = torch.randn(1, 200, 4) + 10.0  # far from every initial code: one code would win them all
    restarts = [vq(frames).restarted for _ in range(5)]
    assert restarts[0] == 0 and sum(restarts) > 0  # usage decays below the threshold first
    vq.reset_usage()
    vq.eval()
    vq(frames)
    assert vq.codebook_usage() > 0.5  # restarted codes took over parts of the data
    distances = torch.cdist(vq.codebook, frames[0]).min(dim=1).values
    assert (distances < 3).float().mean() > 0.9


def test_quantizer_is_straight_through_and_masks_padding():
    vq = VectorQuantizerEMA(num_codes=8, dim=4).train()
    x = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = vq(x, mask)
    out.quantized.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert vq.usage.sum().item() == 8  # only the 8 real frames are counted


def test_nemo_checkpoint_round_trip(tmp_path):
    from megatron_speech.speech.tokenizer_model import SpeechTokenizerModel

    model = _model().eval()
    audio = torch.randn(1, 16000) * 0.1
    before = model.tokenize(audio, torch.tensor([16000]))
    model.save_to(str(tmp_path / "tok.nemo"))
    restored = SpeechTokenizerModel.restore_from(str(tmp_path / "tok.nemo"), map_location="cpu").eval()
    assert restored.tokenize(audio, torch.tensor([16000])) == before
    assert restored.transcribe_tokens(before) == model.transcribe_tokens(before)

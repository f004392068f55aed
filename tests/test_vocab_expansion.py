import pytest
import torch

from megatron_speech.models.config import SpeechGPTConfig, pad_vocab_size
from megatron_speech.models.vocab_expansion import expand_vocabulary, sample_like_rows
from megatron_speech.testing.multiprocess import run_processes

TEXT_VOCAB, SPEECH_VOCAB = 500, 500 + 64 + 7


def text_and_speech_logits(tp: int):
    """Text-token logits of a random text LM and of its speech-expanded copy, in a TP layout."""
    from megatron_speech.models import sharding
    from megatron_speech.models.gpt import build_model, full_logits
    from megatron_speech.parallel import ParallelConfig, init_distributed, shutdown

    layout = ParallelConfig(tp, 1)
    init_distributed(layout)
    config = SpeechGPTConfig(num_layers=2)
    text_model = build_model(config, TEXT_VOCAB, layout)
    text_state = sharding.gather_full_state_dict(text_model)
    speech_model = build_model(config, SPEECH_VOCAB, layout)
    sharding.load_full_state_dict(speech_model, expand_vocabulary(text_state, TEXT_VOCAB, SPEECH_VOCAB))
    tokens = torch.randint(0, TEXT_VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text_logits, speech_logits = full_logits(text_model, tokens), full_logits(speech_model, tokens)
    padded = (text_model.vocab_size, speech_model.vocab_size)
    shutdown()
    return text_logits, speech_logits, padded


@pytest.mark.parametrize("tp", [1, 2])
def test_expansion_keeps_text_logits(tp):
    for text_logits, speech_logits, padded in run_processes(text_and_speech_logits, tp, tp):
        assert speech_logits.shape[-1] == SPEECH_VOCAB
        assert (speech_logits[..., :TEXT_VOCAB] - text_logits).abs().max() < 1e-5
        assert padded == (pad_vocab_size(TEXT_VOCAB, 128, tp), pad_vocab_size(SPEECH_VOCAB, 128, tp))


@pytest.mark.parametrize(
    "vocab, tp, padded",
    [(571, 1, 640), (571, 2, 640), (571, 4, 640), (571, 8, 640), (1024, 8, 1024), (1025, 8, 1152),
     (571, 3, 768), (151_665 + 16_384 + 7, 8, 168_064)],
)
def test_vocab_padding(vocab, tp, padded):
    assert pad_vocab_size(vocab, 128, tp) == padded
    assert SpeechGPTConfig().padded_vocab_size(vocab, tp) == padded


def test_new_rows_follow_text_row_statistics():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(4000, 8, generator=g) @ torch.randn(8, 8, generator=g) + 3.0
    new = sample_like_rows(rows, 20000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(new.mean(0), rows.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(new.T), torch.cov(rows.T), atol=0.15, rtol=0.05)


def test_expansion_copies_text_rows_and_drops_checkpoint_padding():
    state = {"embedding.word_embeddings.weight": torch.randn(520, 16), "output_layer.weight": torch.randn(520, 16),
             "decoder.final_layernorm.weight": torch.ones(16)}
    out = expand_vocabulary(state, 500, 571)
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        assert out[key].shape == (571, 16)
        assert torch.equal(out[key][:500], state[key][:500])
    assert out["decoder.final_layernorm.weight"] is state["decoder.final_layernorm.weight"]
    with pytest.raises(ValueError, match="smaller than the text one"):
        expand_vocabulary(state, 500, 400)

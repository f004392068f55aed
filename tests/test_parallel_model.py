"""The speech GPT on CPU through real Megatron-Core: forward/backward and parallel-layout parity."""

import math

import pytest
import torch

from megatron_speech.testing.multiprocess import run_processes

VOCAB = 300  # pads to 384 at TP=1 and 512 at TP=2: the layouts differ in padding too


def _batches(seed: int = 0, n: int = 2, batch: int = 2, seq: int = 32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = torch.randint(0, VOCAB, (batch, seq + 1), generator=g)
        mask = torch.ones(batch, seq)
        mask[0, :5] = 0  # uneven masks: the loss must be a true token mean
        out.append(dict(tokens=t[:, :-1], labels=t[:, 1:], loss_mask=mask,
                        position_ids=torch.arange(seq).expand(batch, seq)))
    return out


def loss_and_grads(tp: int, pp: int, tie: bool, full_state, batches):
    """Loss, full weights and full gradients of one global batch in a TP/PP layout."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from megatron_speech.models import sharding
    from megatron_speech.models.config import SpeechGPTConfig
    from megatron_speech.models.gpt import build_model
    from megatron_speech.parallel import ParallelConfig, init_distributed, shutdown
    from megatron_speech.training.step import forward_backward

    layout = ParallelConfig(tp, pp)
    init_distributed(layout)
    model = build_model(SpeechGPTConfig(num_layers=4, tie_embeddings=tie), VOCAB, layout)
    if full_state is not None:
        sharding.load_full_state_dict(model, full_state)
    config = model.config
    config.calculate_per_token_loss = True
    config.finalize_model_grads_func = finalize_model_grads
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    ddp.zero_grad_buffer()
    seq, mbs = batches[0]["tokens"].shape[1], batches[0]["tokens"].shape[0]
    result = forward_backward([ddp], iter(batches), len(batches), seq, mbs)
    weights = sharding.gather_full_state_dict(model)
    grads = sharding.gather_full_state_dict(model, grads=True)
    shutdown()
    return result.loss, weights, grads


def test_forward_backward_on_cpu():
    loss, weights, grads = run_processes(loss_and_grads, 1, 1, 1, False, None, _batches())[0]
    assert math.isfinite(loss)
    assert abs(loss - math.log(VOCAB)) < 0.5  # a fresh model is near-uniform over the true vocab
    assert set(grads) == set(weights)
    dead = [name for name, g in grads.items() if not g.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert weights["embedding.word_embeddings.weight"].shape[0] == VOCAB  # canonical: unpadded


@pytest.mark.slow  # 2-process runs; test_convert's tp2/pp2 layouts keep parallel numerics in the default suite
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_tp2_and_pp2_match_single_process(tie):
    batches = _batches()
    loss1, weights, grads1 = run_processes(loss_and_grads, 1, 1, 1, tie, None, batches)[0]
    for tp, pp in ((2, 1), (1, 2)):
        ranks = run_processes(loss_and_grads, 2, tp, pp, tie, weights, batches)
        for loss, w, grads in ranks:
            assert abs(loss - loss1) < 1e-5, (tp, pp, loss, loss1)
            assert set(grads) == set(grads1)
            for name in grads1:
                torch.testing.assert_close(w[name], weights[name], rtol=0, atol=0, msg=name)
                torch.testing.assert_close(grads[name], grads1[name], rtol=0, atol=1e-5, msg=f"{tp=} {pp=} {name}")

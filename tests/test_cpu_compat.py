import subprocess
import sys
import textwrap

import torch

from megatron_speech import cpu_compat


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_cuda_requests_land_on_cpu():
    assert cpu_compat.enable()
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.ones(2).cuda().device.type == "cpu"
    assert torch.empty(3, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.ones(2).to("cuda:0").device.type == "cpu"
    assert torch.ones(2).type() == "torch.cuda.FloatTensor"
    assert torch.ones(2).type(torch.float64).dtype == torch.float64  # the converting form is untouched


def test_cuda_rng_is_the_cpu_generator():
    cpu_compat.enable()
    from megatron.core.tensor_parallel import random as mcore_random

    state = mcore_random._get_cuda_rng_state()
    first = torch.rand(3)
    mcore_random._set_cuda_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_dropout_in_the_model_parallel_fork_is_seeded_and_quiet(caplog):
    """Dropout inside the tracker's "CUDA" fork draws from its own seeded state, without a warning per call."""
    cpu_compat.enable()
    from megatron.core.tensor_parallel import random as mcore_random

    def masks() -> list[torch.Tensor]:
        tracker = mcore_random.get_cuda_rng_tracker()
        tracker.reset()
        tracker.add(mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME, 1234)
        drawn = []
        for _ in range(2):
            with tracker.fork():
                drawn.append(torch.nn.functional.dropout(torch.ones(64), p=0.5))
        return drawn

    with caplog.at_level("WARNING"):
        first, second = masks(), masks()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])  # the fork's state advances between calls
    assert not [r for r in caplog.records if "RNG" in r.getMessage()]


def test_noop_when_cuda_is_present():
    out = _run(
        """
        import torch
        torch.cuda.is_available = lambda: True
        before = torch.cuda.current_device
        from megatron_speech import cpu_compat
        print(cpu_compat.enable(), cpu_compat.is_enabled(), torch.cuda.current_device is before,
              torch._C._len_torch_function_stack())
        """
    )
    assert out == "False False True 0"

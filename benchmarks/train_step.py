"""Training-step throughput of the project's Megatron-Core step, against a baseline in the same run.

    .venv/bin/python benchmarks/train_step.py [--steps 5]

On CPU: tokens/s of one optimizer step of the speech GPT (Megatron GPTModel, DDP, Megatron
optimizer, the 1F1B-capable schedule) and of a plain ``transformers`` LlamaForCausalLM + AdamW step of
the same shape and batch, and their ratio.
On a GPU: tokens/s and model FLOPs utilisation of a ~1.4B model (Llama-3.2-1B shape, speech vocabulary)
in bf16 and, where Transformer Engine supports it, FP8. Goal on one H100 with bf16: >= 45% MFU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from megatron_speech import backends
from megatron_speech import parallel as par
from megatron_speech.models.config import SpeechGPTConfig
from megatron_speech.models.gpt import build_model
from megatron_speech.training.config import OptimConfig, ScheduleConfig, TrainConfig
from megatron_speech.training.data import DataConfig
from megatron_speech.training.loop import build_optimizer, wrap_ddp
from megatron_speech.training.step import train_step

PEAK_DENSE_FLOPS = {"bfloat16": 989.4e12, "fp8": 1978.9e12}  # H100 SXM (H200: same compute)


@dataclass
class Shape:
    model: SpeechGPTConfig
    vocab_size: int
    seq_length: int
    micro_batch_size: int
    num_microbatches: int

    @property
    def tokens_per_step(self) -> int:
        return self.seq_length * self.micro_batch_size * self.num_microbatches


CPU_SHAPE = Shape(SpeechGPTConfig(num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=4,
                                  ffn_hidden_size=704, max_sequence_length=256, transformer_impl="local"),
                  vocab_size=8192, seq_length=256, micro_batch_size=4, num_microbatches=2)
GPU_SHAPE = Shape(SpeechGPTConfig(num_layers=16, hidden_size=2048, num_attention_heads=32, num_query_groups=8,
                                  ffn_hidden_size=8192, max_sequence_length=4096, rotary_base=500000,
                                  params_dtype="bfloat16"),
                  vocab_size=151_665 + 16_384 + 7, seq_length=4096, micro_batch_size=2, num_microbatches=4)


def flops_per_token(shape: Shape) -> float:
    """Training FLOPs a token: 6 x matmul weights (output layer included) + causal attention scores."""
    m = shape.model
    kv = m.hidden_size // m.num_attention_heads * m.num_query_groups
    per_layer = m.hidden_size * (m.hidden_size + 2 * kv) + m.hidden_size**2 + 3 * m.hidden_size * m.ffn_hidden_size
    weights = m.num_layers * per_layer + shape.vocab_size * m.hidden_size
    attention = m.num_layers * m.hidden_size * shape.seq_length * 2  # QK^T and AV, causal half, x3 fwd+bwd
    return 6 * weights + 3 * attention


def _batches(shape: Shape, device) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(shape.num_microbatches):
        tokens = torch.randint(0, shape.vocab_size, (shape.micro_batch_size, shape.seq_length + 1), generator=g)
        out.append({"tokens": tokens[:, :-1].to(device), "labels": tokens[:, 1:].to(device),
                    "loss_mask": torch.ones(shape.micro_batch_size, shape.seq_length, device=device),
                    "position_ids": torch.arange(shape.seq_length, device=device).expand(shape.micro_batch_size, -1)})
    return out


def timed(steps: dict[str, Callable[[], None]], rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds a step of each; the steps alternate, so drift (allocator warm-up, clock
    changes, other load) hits every contender alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            _sync()
            start = time.perf_counter()
            step()
            _sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def megatron_step(shape: Shape):
    """A closure running one optimizer step of the project's training step on random tokens."""
    train = TrainConfig(tokenizer="", data=DataConfig(seq_length=shape.seq_length), model=shape.model,
                        optim=OptimConfig(lr=1e-4, warmup_steps=1),
                        schedule=ScheduleConfig(steps=1000, micro_batch_size=shape.micro_batch_size))
    model = build_model(shape.model, shape.vocab_size, par.ParallelConfig())
    chunks = [wrap_ddp(model, train)]
    optimizer, scheduler = build_optimizer(chunks, train)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = _batches(shape, device)

    def step():
        train_step(chunks, optimizer, scheduler, iter(batches), shape.num_microbatches, shape.seq_length,
                   shape.micro_batch_size)

    return step


def transformers_step(shape: Shape):
    """The same step in plain ``transformers`` + ``torch.optim.AdamW`` (CPU baseline)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    m = shape.model
    config = LlamaConfig(vocab_size=shape.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
                         num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
                         num_key_value_heads=m.num_query_groups, max_position_embeddings=m.max_sequence_length,
                         tie_word_embeddings=m.tie_embeddings)
    model = LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    batches = _batches(shape, "cpu")

    def step():
        optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            loss = model(input_ids=batch["tokens"]).logits.float()
            loss = torch.nn.functional.cross_entropy(loss.flatten(0, 1), batch["labels"].flatten())
            (loss / len(batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_cpu(steps: int) -> None:
    shape = CPU_SHAPE
    torch.manual_seed(0)
    print(f"shape: {shape.model.num_layers} layers, hidden {shape.model.hidden_size}, vocab {shape.vocab_size}, "
          f"{shape.tokens_per_step} tokens a step ({shape.num_microbatches} x {shape.micro_batch_size} x "
          f"{shape.seq_length}), {torch.get_num_threads()} threads")
    seconds = timed({"ours": megatron_step(shape), "transformers": transformers_step(shape)}, steps)
    ours, baseline = seconds["ours"], seconds["transformers"]
    tps = shape.tokens_per_step
    print(f"megatron_speech step : {tps / ours:10,.0f} tokens/s ({ours * 1e3:.0f} ms a step)")
    print(f"transformers step    : {tps / baseline:10,.0f} tokens/s ({baseline * 1e3:.0f} ms a step)")
    print(f"ratio (ours / transformers): {baseline / ours:.2f}x")


def run_gpu(steps: int) -> None:
    have = backends.available()
    print(f"device: {torch.cuda.get_device_name()} | {have.describe()}")
    variants = [("bfloat16", None)] + ([("fp8", "hybrid")] if have.fp8 else [])
    if not have.fp8:
        print("fp8: skipped (needs Transformer Engine on Hopper or newer)")
    for name, fp8 in variants:
        shape = replace(GPU_SHAPE, model=replace(GPU_SHAPE.model, fp8=fp8))
        seconds = timed({name: megatron_step(shape)}, steps)[name]
        tokens_per_s = shape.tokens_per_step / seconds
        achieved = tokens_per_s * flops_per_token(shape)
        peak = PEAK_DENSE_FLOPS[name]
        print(f"{name:9s}: {tokens_per_s:10,.0f} tokens/s, {achieved / 1e12:6.1f} TFLOP/s, "
              f"MFU {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s dense ({name} peak)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each, after 3 warm-up steps (median)")
    args = parser.parse_args()
    par.init_distributed(par.ParallelConfig())  # one process
    try:
        run_gpu(args.steps) if torch.cuda.is_available() else run_cpu(args.steps)
    finally:
        par.shutdown()


if __name__ == "__main__":
    main()

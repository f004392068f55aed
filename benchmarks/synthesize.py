"""Speech tokens/s of the synthesis engine, against a plain generation loop in the same run.

    .venv/bin/python benchmarks/synthesize.py [--spans 256] [--baseline-spans 24]

The spans are real: the span sampler's picks (η = 0.3, Poisson mean 10 words) from the default
corpus. The model has random weights, so every span decodes to a fixed length, 0.9 tokens a character
(the rate of speech at 12.5 Hz), ignoring <|end_of_audio|>; both contenders generate the same tokens.

- engine: ``SpanGenerator`` (length-sorted static batches, Megatron's KV cache);
- engine, batch 1: the KV cache without batching;
- plain loop: one span at a time, the whole sequence re-run for every new token (no cache).

The baselines run on the first ``--baseline-spans`` spans (rates, not totals, are compared).
Goal on CPU: engine >= 5x the plain loop. On a GPU, a 1.5B-shaped model (Qwen2-1.5B shape, 16,384
speech codes) in bf16 is measured instead, against the paper's 25k tokens/s on one H800.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from megatron_speech import backends
from megatron_speech import parallel as par
from megatron_speech.data.default_corpus import default_documents
from megatron_speech.models.config import SpeechGPTConfig
from megatron_speech.models.gpt import build_model, full_logits
from megatron_speech.synthesis.generate import GenerationConfig, SpanGenerator
from megatron_speech.synthesis.spans import SpanConfig, sample_spans, split_document
from megatron_speech.lm_tokenizer import SpeechTextTokenizer

PAPER_TOKENS_PER_S = 25_000  # 1.5B text-to-token model on one H800 (arXiv 2411.17607)

CPU_MODEL = SpeechGPTConfig(num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=4,
                            ffn_hidden_size=704, max_sequence_length=1024, transformer_impl="local")
GPU_MODEL = SpeechGPTConfig(num_layers=28, hidden_size=1536, num_attention_heads=12, num_query_groups=2,
                            ffn_hidden_size=8960, max_sequence_length=4096, rotary_base=1_000_000,
                            tie_embeddings=True, qkv_bias=True, params_dtype="bfloat16")


def word_level_tokenizer(text_vocab: int, codebook_size: int, directory: Path) -> SpeechTextTokenizer:
    """A tokenizer of the target vocabulary size (word-level: every word one id), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for doc in default_documents() for w in doc.split()})[: text_vocab - 2]
    vocab = {"<unk>": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    vocab.update({f"<unused_{i}>": i for i in range(len(vocab), text_vocab)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(directory / "tokenizer.json"))
    return SpeechTextTokenizer.from_text_tokenizer(directory / "tokenizer.json", codebook_size)


def span_texts(count: int) -> list[str]:
    config, texts = SpanConfig(), []
    for i, doc in enumerate(default_documents()):
        texts += [p.text for p in split_document(doc, sample_spans(doc, f"doc-{i}", config)) if p.speech]
        if len(texts) >= count:
            return texts[:count]
    return texts


def plain_loop(generator: SpanGenerator, texts: list[str]) -> int:
    """One span at a time, no KV cache: the whole sequence is run again for every token."""
    tokens_out = 0
    device = generator.device
    for text in texts:
        ids = torch.tensor([generator.prompt(text)], device=device)
        for _ in range(generator.config.length_bounds(text)[1] + 1):
            logits = full_logits(generator.model, ids)[0, -1]
            logits = logits.masked_fill(~generator.allowed, float("-inf"))
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
            tokens_out += 1
    return tokens_out


def engine(generator: SpanGenerator, texts: list[str]) -> int:
    prompts = [generator.prompt(t) for t in texts]
    max_new = [generator.config.length_bounds(t)[1] + 1 for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(prompts[i]))
    tokens_out = 0
    size = generator.config.batch_size
    for b in range(0, len(order), size):
        batch = order[b: b + size]
        outputs = generator.decode([prompts[i] for i in batch], [max_new[i] for i in batch], [0] * len(batch))
        tokens_out += sum(map(len, outputs))
    return tokens_out


def rate(fn, *args) -> tuple[float, int]:
    if backends.available().cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = fn(*args)
    if backends.available().cuda:
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=256)
    parser.add_argument("--baseline-spans", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=0, help="default: 64 on CPU, 256 on GPU")
    args = parser.parse_args()
    on_gpu = backends.available().cuda
    model_config = GPU_MODEL if on_gpu else CPU_MODEL
    print(f"backends: {backends.available().describe()}")
    par.init_distributed(par.ParallelConfig())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = word_level_tokenizer(151_936 if on_gpu else 8192, 16_384 if on_gpu else 1024, Path(tmp))
    torch.manual_seed(0)
    model = build_model(model_config, tokenizer.vocab_size, par.ParallelConfig())
    params = sum(p.numel() for p in model.parameters())
    gen_config = GenerationConfig(batch_size=args.batch_size or (256 if on_gpu else 64), max_tokens_per_char=0.9,
                                  extra_tokens=0, ignore_end_of_audio=True)
    generator = SpanGenerator(model, tokenizer, gen_config)
    single = SpanGenerator(model, tokenizer, GenerationConfig(**{**gen_config.__dict__, "batch_size": 1}))
    texts = span_texts(args.spans)
    print(f"model: {params / 1e6:,.1f}M parameters, {model_config.params_dtype} | {len(texts)} spans, "
          f"{sum(map(len, texts)) / len(texts):.0f} characters a span on average")
    engine(generator, texts[: gen_config.batch_size // 4])  # warm-up
    fast, n = rate(engine, generator, texts)
    print(f"engine (batch {gen_config.batch_size}, KV cache): {fast:,.0f} speech tokens/s ({n:,} tokens)")
    subset = texts[: args.baseline_spans]
    cached, n1 = rate(engine, single, subset)
    print(f"engine, batch 1:                  {cached:,.0f} speech tokens/s ({n1:,} tokens)")
    if not on_gpu:
        plain, n2 = rate(plain_loop, generator, subset)
        print(f"plain loop (no batch, no cache):  {plain:,.0f} speech tokens/s ({n2:,} tokens)")
        print(f"ratio engine / plain loop: {fast / plain:.1f}x (goal >= 5x); engine / batch 1: {fast / cached:.1f}x")
    else:
        print(f"ratio engine / batch 1: {fast / cached:.1f}x; "
              f"engine / paper's 25k tokens/s per H800: {fast / PAPER_TOKENS_PER_S:.2f}x")
    par.shutdown()


if __name__ == "__main__":
    main()

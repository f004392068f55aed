"""Evaluation throughput (items/s), batched against batch 1, in the same run.

    .venv/bin/python benchmarks/evaluate.py [--items 64] [--batch-size 16]

The model is the synthesis benchmark's (random weights, 4 layers, hidden 256 on CPU); the tasks are
made up to the shapes of the mini recipe's: a StoryCloze-like item is a spoken context of ~100
speech tokens (8 s at 12.5 Hz) with 2 spoken endings of ~40, and its text; a spoken question of ~60
tokens. Likelihood items are scored in S→S, S→T and T→T; questions are answered in S→T (16 text
tokens) and S→S (60 speech tokens: a random model never stops, so every answer runs to its limit).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from synthesize import CPU_MODEL, word_level_tokenizer

from megatron_speech import parallel as par
from megatron_speech.data.default_corpus import default_documents
from megatron_speech.evaluation.run import EvalConfig, Evaluator, TaskConfig
from megatron_speech.evaluation.model import ModelSource
from megatron_speech.models.gpt import build_model


def write_tasks(folder: Path, count: int, codebook_size: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    docs = default_documents()
    codes = lambda n: rng.integers(0, codebook_size, int(rng.integers(n * 3 // 4, n * 5 // 4))).tolist()  # noqa: E731
    cloze = [{"id": str(i), "context": " ".join(docs[i].split()[:30]), "candidates": [docs[i + 1][:40], docs[i + 2][:40]],
              "answer": 0, "context_speech_tokens": codes(100), "candidates_speech_tokens": [codes(40), codes(40)]}
             for i in range(count)]
    questions = [{"id": str(i), "question": docs[i][:60], "answers": ["x"], "question_speech_tokens": codes(60)}
                 for i in range(count)]
    paths = folder / "cloze.jsonl", folder / "qa.jsonl"
    for path, records in zip(paths, (cloze, questions)):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return paths


class NoTranscription:
    """Spoken answers are timed up to their tokens; transcribing them is the speech tokenizer's cost."""

    def transcribe_tokens(self, codes):
        return [""] * len(codes)


def items_per_s(evaluator: Evaluator, task: TaskConfig, items: int) -> float:
    start = time.perf_counter()
    evaluator.run_task(task)
    return items * len(task.modalities) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    par.init_distributed(par.ParallelConfig())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = word_level_tokenizer(8192, 1024, Path(tmp))
        cloze_file, qa_file = write_tasks(Path(tmp), args.items, tokenizer.codebook_size)
        torch.manual_seed(0)
        model = build_model(CPU_MODEL, tokenizer.vocab_size, par.ParallelConfig()).eval()
        cloze = TaskConfig("cloze", str(cloze_file), ["s2s", "s2t", "t2t"])
        qa = TaskConfig("qa", str(qa_file), ["s2t", "s2s"], max_text_tokens=16, max_speech_tokens=60)
        print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters | {args.items} items a task")
        rates = {}
        for batch_size in (args.batch_size, 1):
            config = EvalConfig(ModelSource(hf="unused"), [cloze, qa], batch_size=batch_size)
            evaluator = Evaluator(config, model, tokenizer, CPU_MODEL.max_sequence_length, NoTranscription())
            if batch_size != 1:
                evaluator.run_task(TaskConfig("warm-up", str(cloze_file), ["t2t"], limit=8))
            rates[batch_size] = {t.name: items_per_s(evaluator, t, args.items) for t in (cloze, qa)}
            print(f"batch {batch_size:>3}: likelihood {rates[batch_size]['cloze']:7.1f} items/s, "
                  f"QA {rates[batch_size]['qa']:6.1f} questions/s")
    for name in ("cloze", "qa"):
        print(f"ratio batched / batch 1, {name}: {rates[args.batch_size][name] / rates[1][name]:.1f}x")
    par.shutdown()


if __name__ == "__main__":
    main()

"""One evaluation run: a model, its tasks and their modalities (one YAML), a JSON report and a table.

    model: {checkpoint: ckpt/, tokenizer: tokenizer/}      # or {hf: exported/}
    speech_tokenizer: work/.../whisper_vq_mini.nemo        # transcribes spoken answers (S→S QA)
    heard_answers: {speech_decoder: DECODER.nemo, judge: whisper}   # optional: S→S answers also decoded and heard
    batch_size: 8
    tasks:
      - {name: cloze, file: cloze_spoken.jsonl, modalities: [s2s, s2t, t2t]}
      - {name: qa, file: qa_spoken.jsonl, modalities: [s2t, s2s, t2t], few_shot: 2, shots_file: shots.jsonl}

A task's kind (likelihood or QA) is read off its file. Items that lack the speech a modality needs
are an error before anything runs, not a silently smaller test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from megatron_speech.data.speech_tokens import check_same_tokenizer, read_info
from megatron_speech.evaluation import likelihood, qa
from megatron_speech.evaluation.heard import AnswerListener, HeardAnswersConfig
from megatron_speech.evaluation.model import ModelSource, load_lm
from megatron_speech.evaluation.prompts import (MODALITIES, check_modality, likelihood_requests, missing_speech,
                                                qa_prompt, speech_out)
from megatron_speech.evaluation.tasks import LIKELIHOOD, QAItem, read_task

ARROWS = {"s2s": "S→S", "s2t": "S→T", "t2t": "T→T"}


@dataclass
class TaskConfig:
    name: str
    file: str
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    limit: int | None = None  # the first N items
    # QA only
    template: str = "Question: {question}\nAnswer:"
    few_shot: int = 0
    shots_file: str | None = None  # examples for few-shot prompts (the first few_shot items)
    max_text_tokens: int = 32
    max_speech_tokens: int = 200

    def __post_init__(self) -> None:
        for modality in self.modalities:
            check_modality(modality)
        if self.few_shot and not self.shots_file:
            raise ValueError(f"task {self.name}: few_shot needs shots_file")
        if "{question}" not in self.template:
            raise ValueError(f"task {self.name}: template has no {{question}}")


@dataclass
class EvalConfig:
    model: ModelSource
    tasks: list[TaskConfig]
    speech_tokenizer: str | None = None  # a speech tokenizer .nemo: transcribes spoken answers
    batch_size: int = 8
    output: str | None = None  # the JSON report
    heard_answers: HeardAnswersConfig | None = None  # S→S answers also decoded to audio and heard by a judge

    def __post_init__(self) -> None:
        if self.heard_answers and not (self.heard_answers.audio_dir or self.output):
            raise ValueError("heard_answers needs audio_dir, or output to put <output>.answers/ beside")

    def answers_audio_dir(self) -> Path:
        return Path(self.heard_answers.audio_dir or f"{self.output}.answers")


class Evaluator:
    """Scores tasks with one loaded model (and, for spoken answers, one speech tokenizer)."""

    def __init__(self, config: EvalConfig, model=None, tokenizer=None, max_length: int | None = None,
                 speech_model=None) -> None:
        self.config = config
        if model is None:
            model, tokenizer, max_length = load_lm(config.model)
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self._speech_model = speech_model
        self._speech_info: dict | None = None  # the speech tokenizer's record (its .nemo hashed once)
        self._answers: qa.AnswerGenerator | None = None
        self.listener = AnswerListener(config.heard_answers, config.answers_audio_dir()) if config.heard_answers else None

    def speech_model(self):
        if self._speech_model is None:
            if not self.config.speech_tokenizer:
                raise ValueError("spoken answers (S→S QA) need speech_tokenizer: a .nemo to transcribe them")
            from megatron_speech.speech_tokenizer.load import load_speech_tokenizer

            self._speech_model = load_speech_tokenizer(self.config.speech_tokenizer)
        return self._speech_model

    def answers(self) -> qa.AnswerGenerator:
        """One generator for every QA task (it scans the text vocabulary for newlines once)."""
        if self._answers is None:
            self._answers = qa.AnswerGenerator(self.model, self.tokenizer)
        return self._answers

    # ---- a task ---------------------------------------------------------------------------------

    def read(self, task: TaskConfig, path: str | None = None, limit: int | None = None):
        """(kind, items) of the task's file (or its shots file), checked for the speech its modalities need."""
        path = path or task.file
        kind, items = read_task(path, self.tokenizer.codebook_size)
        items = items[:limit] if limit else items
        self._check_speech_tokenizer(path)
        for modality in task.modalities:
            lacking = next(((i, m) for i in items if (m := missing_speech(i, modality))), None)
            if lacking:
                raise ValueError(f"{path}: item {lacking[0].id!r} has no {lacking[1]}_tokens, which "
                                 f"{ARROWS[modality]} needs (build the spoken task with tools/build_spoken_task.py)")
        return kind, items

    def _check_speech_tokenizer(self, path: str) -> None:
        """Spoken tasks made by another speech tokenizer than the one that transcribes answers are refused."""
        if self.config.speech_tokenizer and read_info(path) is not None:
            if self._speech_info is None:
                from megatron_speech.speech_tokenizer.load import describe

                self._speech_info = describe(self.config.speech_tokenizer, self.speech_model())
            check_same_tokenizer(path, self._speech_info, self.config.speech_tokenizer)

    def run_task(self, task: TaskConfig) -> dict:
        kind, items = self.read(task, limit=task.limit)
        shots = self.read(task, task.shots_file, task.few_shot)[1] if task.few_shot else []
        report = {"kind": kind, "file": task.file, "modalities": {}}
        for modality in task.modalities:
            started = time.perf_counter()
            if kind == LIKELIHOOD:
                results, summary = self.likelihood(task, items, modality)
            else:
                results, summary = self.qa(task, items, modality, shots)
            seconds = time.perf_counter() - started
            report["modalities"][modality] = {**summary, "seconds": round(seconds, 3),
                                              "items_per_s": round(len(items) / seconds, 3), "results": results}
        return report

    def likelihood(self, task: TaskConfig, items, modality: str):
        requests = [likelihood_requests(item, modality, self.tokenizer) for item in items]
        flat = [r for per_item in requests for r in per_item]
        with _progress(len(flat), f"{task.name} {ARROWS[modality]}", "candidates") as bar:
            scores = likelihood.score_requests(self.model, flat, self.config.batch_size, self.max_length,
                                               self.tokenizer.pad, bar)
        results, at = [], 0
        for item, per_item in zip(items, requests):
            results.append(likelihood.item_result(item, scores[at: at + len(per_item)]))
            at += len(per_item)
        return results, likelihood.summarize(results)

    def qa(self, task: TaskConfig, items: list[QAItem], modality: str, shots: list[QAItem]):
        prompts = [qa_prompt(item, modality, self.tokenizer, task.template, shots) for item in items]
        generator = self.answers()
        limit = task.max_speech_tokens if speech_out(modality) else task.max_text_tokens
        with _progress(len(prompts), f"{task.name} {ARROWS[modality]}", "questions") as bar:
            answers = generator.generate(prompts, speech_out(modality), self.config.batch_size, limit, bar)
        heard: list[str | None] = [None] * len(answers)
        if speech_out(modality):
            predictions = self.transcribe(answers)
            extra = [{"speech_tokens": len(codes)} for codes in answers]
            if self.listener:
                heard = self.hear(answers, f"{task.name}-{modality}")
        else:
            predictions = [generator.text_of(ids) for ids in answers]
            extra = [{}] * len(answers)
        results = [qa.item_result(item, p, e, h) for item, p, e, h in zip(items, predictions, extra, heard)]
        return results, qa.summarize(results)

    def hear(self, answers: list[list[int]], name: str) -> list[str]:
        """Spoken answers decoded and heard (``evaluation.heard``): by the first rank, which shares the
        transcripts, so that ranks never write the same audio and every rank reports the same scores."""
        import torch.distributed as dist

        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self.listener.hear(answers, name)
        shared = [self.listener.hear(answers, name) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def transcribe(self, answers: list[list[int]], batch_size: int = 32) -> list[str]:
        """Spoken answers as text, by the speech tokenizer's tokens → text path ("" for no speech)."""
        spoken = [codes for codes in answers if codes]
        texts = []
        for start in range(0, len(spoken), batch_size):
            texts += self.speech_model().transcribe_tokens(spoken[start: start + batch_size])
        texts = iter(texts)
        return [next(texts) if codes else "" for codes in answers]


def _progress(total: int, what: str, unit: str):
    """A progress bar with items/s, on the first rank only (every rank does the same work)."""
    import torch.distributed as dist

    quiet = dist.is_initialized() and dist.get_rank() != 0
    return tqdm(total=total, desc=what, unit=unit, mininterval=2.0, disable=quiet)


def evaluate(config: EvalConfig, evaluator: Evaluator | None = None) -> dict:
    """The report: per task and modality, the summary figures and each item's result."""
    evaluator = evaluator or Evaluator(config)
    return {"model": {k: v for k, v in vars(config.model).items() if v is not None},
            "tasks": {task.name: evaluator.run_task(task) for task in config.tasks}}


def table(report: dict) -> str:
    """One line per task and modality: accuracy (likelihood) or exact match / contains (QA)."""
    lines = [f"{'task':<20} {'modality':<8} {'items':>6}  {'metric':<28} {'items/s':>8}"]
    for name, task in report["tasks"].items():
        for modality, r in task["modalities"].items():
            if task["kind"] == LIKELIHOOD:
                metric = f"acc {r['acc']:.3f}  per-token {r['acc_per_token']:.3f}"
            else:
                metric = f"EM {r['exact_match']:.3f}  contains {r['contains']:.3f}"
                if "heard_exact_match" in r:
                    metric += f"  heard: EM {r['heard_exact_match']:.3f}  contains {r['heard_contains']:.3f}"
            lines.append(f"{name:<20} {ARROWS[modality]:<8} {r['items']:>6}  {metric:<28} {r['items_per_s']:>8.2f}")
    return "\n".join(lines)


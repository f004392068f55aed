"""The paper in miniature: the method end to end on one small machine, and its central ablation.

    .venv/bin/python examples/mini/run.py                  # the quick preset (the README's first command)
    .venv/bin/python examples/mini/run.py --preset full    # arms A, B-half, B x 3 seeds, and the plot
    .venv/bin/python examples/mini/run.py --preset tiny --work /tmp/mini   # every stage in a few steps

The stages, each through the project's own tools in subprocesses, as a user would run them:

    world -> speech corpus -> speech tokenizer (from Whisper tiny.en) -> speech tokens ->
    text-to-token model -> text LM (the world's prose) -> speech-text data (its vocabulary: the text
    LM's plus the codes) -> synthesis (interleaved data from that prose) -> spoken tasks (a voice no
    training utterance uses) ->
    [speech warm-up: the text LM on speech, ASR and TTS, shared by the arms] ->
    per arm and seed: speech-text pre-training from the text LM (or the warm-up), evaluation -> report

``--set lm.speech_warmup_steps=10000`` (any preset key, the value parsed as YAML) changes the preset;
a work folder is claimed for the settings it was started with (``job.json``, ``megatron_speech.jobs``)
and refuses others; ``--set "seeds=[0, 1, 2]"`` or other ``arms`` on a finished folder adds those runs.
``--from SOURCE --work NEW --set synthesis.ratio=0.5`` starts a new folder from SOURCE's finished
stages that the changed settings do not reach (``fork.py``).

A finished stage leaves ``<work>/stages/<name>.json`` (its figures and time): a rerun skips it, and
the tools resume inside the stage that was stopped (training from its last checkpoint, jobs from
their finished chunks). One run at a time holds a work folder (a lock).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import yaml

from megatron_speech import atomic, config_loader, jobs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fork  # noqa: E402  (examples/mini/fork.py: a folder started from another's stages)
import report  # noqa: E402  (examples/mini/report.py: the tables and the plot)

ROOT = HERE.parents[1]
ARMS = {"A": 0.0, "B-half": 0.5, "B": 1.0}  # each arm's interleaved data, as a share of B's
SELECTION = {"seeds", "arms"}  # which arm runs a folder holds: not settings its stages depend on


class StageFailed(RuntimeError):
    pass


class Recipe:
    """One preset in one work folder: paths, the tools' command lines, and the stages."""

    def __init__(self, preset: str, work: Path, python: str, overrides: Iterable[str] = ()) -> None:
        presets = yaml.safe_load((HERE / "presets.yaml").read_text())
        if preset not in presets:
            raise SystemExit(f"unknown preset {preset!r}; presets.yaml has {sorted(presets)}")
        self.name, self.p, self.work, self.python = preset, presets[preset], work, python
        try:
            changes = config_loader.parse_overrides(list(overrides))
        except config_loader.ConfigError as exc:
            raise SystemExit(f"error: {exc}") from None
        unknown = [key for key in changes if not _has_key(self.p, key)]
        if unknown:  # a misspelt key would otherwise add a setting nothing reads
            raise SystemExit(f"--set: presets.yaml: {preset} has no key {', '.join(unknown)}")
        config_loader.apply_overrides(self.p, changes)
        unknown = [a for a in self.p["arms"] if a not in ARMS]
        if unknown:
            raise SystemExit(f"presets.yaml: {preset}: unknown arms {unknown}; known: {sorted(ARMS)}")

    def settings(self) -> dict:
        """What a work folder's stages are made with (``job.json``)."""
        return {"preset": self.name, **self.p}

    # ---- paths --------------------------------------------------------------------------------

    def w(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    @property
    def speech_tokenizer(self) -> Path:
        return self.w("speech_tokenizer", "whisper_vq", "whisper_vq.nemo")

    def arm_dir(self, arm: str, seed: int) -> Path:
        return self.w("arms", f"{arm}_seed{seed}")

    # ---- running tools ------------------------------------------------------------------------

    def tool(self, script: str, *args: object) -> None:
        self._run([self.python, str(ROOT / "tools" / script), *map(str, args)])

    def pretrain(self, config: dict, name: str) -> None:
        """tools/pretrain.py on ``nproc`` gloo processes; resumes from the run's last checkpoint."""
        path = self.w("configs", f"{name}.yaml")
        atomic.write_text(path, yaml.safe_dump(config, sort_keys=False))
        self._run([self.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(self.p["nproc"]), str(ROOT / "tools" / "pretrain.py"), "--config", str(path)])

    def _run(self, command: list[str]) -> None:
        print("  $ " + " ".join(shlex.quote(c) for c in command), flush=True)
        done = subprocess.run(command, cwd=ROOT)
        if done.returncode:
            tool = next((Path(c).name for c in command[1:] if c.endswith(".py")), command[1])  # not torchrun's "-m"
            raise StageFailed(f"exit status {done.returncode} from {tool}")

    def training_config(self, name: str, tokenizer: Path, sources: list[dict], steps: int, section: dict,
                        seq_length: int, seed: int = 0, init: dict | None = None) -> dict:
        """A tools/pretrain.py YAML: the preset's model/optim/schedule, this run's data and paths."""
        out = self.w(name)
        config = {
            "tokenizer": str(tokenizer),
            "data": {"sources": sources, "seq_length": seq_length, "split": "100,0,0", "seed": 1234 + seed},
            "model": section["model"], "optim": section["optim"],
            "schedule": {**section["schedule"], "steps": steps, "seed": 1234 + seed,
                         "metrics_file": str(out / "metrics.jsonl")},
            "checkpoint": {"dir": str(out / "checkpoints"), "save_interval": max(1, steps // 3)},
        }
        if init:
            config["init"] = init
        return config

    # ---- the stages ---------------------------------------------------------------------------

    def stages(self) -> list[tuple[str, callable]]:
        stages = [("world", self.world), ("speech_corpus", self.speech_corpus),
                  ("speech_tokenizer", self.train_speech_tokenizer), ("speech_tokens", self.speech_tokens),
                  ("text_to_token", self.text_to_token), ("text_lm", self.text_lm),
                  ("speech_text_data", self.speech_text_data), ("synthesis", self.synthesis),
                  ("spoken_tasks", self.spoken_tasks),
                  ("evaluate_text_lm", self.evaluate_text_lm)]
        if self.warmup_steps:
            stages += [("speech_warmup", self.speech_warmup), ("evaluate_speech_warmup", self.evaluate_speech_warmup)]
        for seed in self.p["seeds"]:
            for arm in self.p["arms"]:
                stages.append((f"pretrain_{arm}_seed{seed}", lambda a=arm, s=seed: self.speech_text_pretrain(a, s)))
                stages.append((f"evaluate_{arm}_seed{seed}", lambda a=arm, s=seed: self.evaluate_arm(a, s)))
        return stages

    def reads(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The settings (dotted preset keys) and the earlier stages a stage's outputs depend on: what a
        change of settings reaches (``fork.py``). Kept next to the stages: a stage that starts reading
        another key must say so here."""
        training = ("nproc",)
        text_lm = ("lm.text_vocab_size", "lm.model", "lm.optim", "lm.seq_length", "lm.text_lm_steps", "lm.schedule")
        fixed = {
            "world": (("world",), ()),
            "speech_corpus": (("speech_corpus",), ()),
            "speech_tokenizer": (("speech_tokenizer", "speech_tokenizer_model"), ("speech_corpus",)),
            "speech_tokens": ((), ("speech_corpus", "speech_tokenizer")),
            "text_to_token": (("text_to_token", *training), ("speech_tokenizer", "speech_tokens")),
            "text_lm": ((*text_lm, *training), ("world", "speech_tokens")),
            "speech_text_data": ((), ("world", "speech_tokens", "text_lm")),
            "synthesis": (("synthesis",), ("world", "text_to_token", "speech_text_data")),
            "spoken_tasks": (("evaluation.held_out_voice",), ("world", "speech_tokenizer")),
            "evaluate_text_lm": (("evaluation",), ("world", "text_lm")),
            "speech_warmup": (("lm.model", "lm.optim", "lm.seq_length", "lm.speech_warmup_steps", "lm.schedule",
                               "mixture", *training), ("text_lm", "speech_text_data")),
            "evaluate_speech_warmup": (("evaluation",), ("speech_warmup", "world", "speech_tokenizer", "spoken_tasks")),
        }
        if name in fixed:
            return fixed[name]
        kind, arm, seed = _arm_stage(name)
        if kind == "evaluate":
            return ("evaluation",), (f"pretrain_{arm}_seed{seed}", "world", "speech_tokenizer", "spoken_tasks")
        upstream = ("text_lm", "speech_text_data") + (("speech_warmup",) if self.warmup_steps else ())
        if ARMS[arm]:  # arm A reads no interleaved data: the synthesis settings do not reach it
            return ("lm", "mixture", "interleaved_share", *training), (*upstream, "synthesis")
        return ("lm", "mixture", *training), upstream

    def outputs(self, name: str) -> list[str]:
        """The files a stage writes, as globs relative to the work folder (the narrowest match owns a
        file: ``text_lm/eval.json`` is the text LM's evaluation's, the rest of ``text_lm/`` the text LM's)."""
        fixed = {"speech_text_data": ["lm_tokenizer", "data/text*", "data/speech*", "data/asr*", "data/tts*"],
                 "synthesis": ["synthesis", "data/interleaved*"], "spoken_tasks": ["tasks"],
                 "evaluate_text_lm": ["text_lm/eval.json"], "evaluate_speech_warmup": ["speech_warmup/eval.json"]}
        if name in fixed:
            return fixed[name]
        if name.startswith(("pretrain_", "evaluate_")):
            kind, arm, seed = _arm_stage(name)
            folder = self.arm_dir(arm, seed).relative_to(self.work).as_posix()
            return [folder] if kind == "pretrain" else [f"{folder}/eval.json"]
        return [name]  # the stage's own folder

    def world(self) -> dict:
        self.tool("build_world.py", self.w("world"), *_flags(self.p["world"]))
        shown = _read_jsonl(self.w("world", "qa_train.jsonl"))
        # few-shot examples: one person each, and a different fact each (five facts a person)
        shots = [shown[5 * i + i % 5] for i in range(min(len(shown) // 5, 5))]
        atomic.write_text(self.w("world", "qa_shots.jsonl"), "".join(json.dumps(s) + "\n" for s in shots))
        return json.loads(self.w("world", "world.json").read_text())["counts"]

    def speech_corpus(self) -> dict:
        self.tool("build_speech_corpus.py", self.w("speech_corpus"), *_flags(self.p["speech_corpus"]))
        return {split: _count_lines(self.w("speech_corpus", f"{split}.jsonl"))
                for split in ("train", "dev", "test", "test_heldout_voice")}

    def train_speech_tokenizer(self) -> dict:
        if self.p.get("speech_tokenizer_model"):
            return self.adopt_speech_tokenizer(Path(self.p["speech_tokenizer_model"]).resolve())
        corpus = self.w("speech_corpus")
        self.tool("train_speech_tokenizer.py", "name=whisper_vq", f"exp_manager.exp_dir={self.w('speech_tokenizer')}",
                  f"model.train_ds.manifest_filepath={corpus / 'train.jsonl'}",
                  f"model.validation_ds.manifest_filepath={corpus / 'dev.jsonl'}", *self.p["speech_tokenizer"])
        return report.speech_tokenizer_figures(self.speech_tokenizer.with_suffix(".eval.json"))

    def adopt_speech_tokenizer(self, model: Path) -> dict:
        """A speech tokenizer trained before (``speech_tokenizer_model``, e.g. the tokenizer recipe's
        2,200-step run) instead of training one: copied in and evaluated on this corpus's test sets. Why:
        the tokenizer is one of the longest shared stages, and a user who has one need not train it
        again for every work folder; the copy keeps the folder whole if the original moves."""
        if not model.is_file():
            raise StageFailed(f"speech_tokenizer_model: {model}: no such file")
        self.speech_tokenizer.parent.mkdir(parents=True, exist_ok=True)
        partial = self.speech_tokenizer.with_name(self.speech_tokenizer.name + ".partial")
        shutil.copyfile(model, partial)
        partial.replace(self.speech_tokenizer)
        output = self.w("speech_tokenizer", "adopted.eval.json")
        self.tool("evaluate_speech_tokenizer.py", self.speech_tokenizer, self.w("speech_corpus", "test.jsonl"),
                  self.w("speech_corpus", "test_heldout_voice.jsonl"), "--output", output)
        trained = model.with_suffix(".eval.json")  # the training run's report, if it is beside the model
        run = json.loads(trained.read_text()) if trained.is_file() else {}
        return {**report.speech_tokenizer_figures(output), "steps": run.get("steps"),
                "cut_short": run.get("cut_short", False), "adopted": str(model)}

    def speech_tokens(self) -> dict:
        figures = {}
        for split in ("train", "test"):  # training data; the synthetic-span check's texts
            output = self.w("speech_tokens", f"{split}.jsonl")
            self.tool("tokenize_speech.py", self.w("speech_corpus", f"{split}.jsonl"), output,
                      "--model", self.speech_tokenizer, "--batch-size", 32)
            figures[split] = _count_lines(output)
        return figures

    def text_to_token(self) -> dict:
        """The TTS model (text -> speech tokens) of the synthesis, and its synthetic-span WER."""
        t2t, tokens = self.w("text_to_token"), self.w("speech_tokens", "train.jsonl")
        self.tool("build_tokenizer.py", t2t / "tokenizer", "--train-on", tokens, "--text-vocab-size", 512,
                  "--codebook-of", tokens)
        self.tool("preprocess_data.py", tokens, "--tokenizer", t2t / "tokenizer", "--output-prefix",
                  t2t / "data" / "tts", "--layout", "tts")
        section = self.p["text_to_token"]
        sources = [{"prefix": str(t2t / "data" / "tts"), "weight": 1.0, "layout": "tts", "loss": "audio"}]
        self.pretrain(self.training_config("text_to_token", t2t / "tokenizer", sources, section["schedule"]["steps"],
                                           section, 256), "text_to_token")
        self.tool("evaluate_synthesis.py", "--config", self.synthesis_config(), "--speech-tokenizer",
                  self.speech_tokenizer, "--texts", self.w("speech_tokens", "test.jsonl"), "--output",
                  t2t / "eval_test.json")
        return report.synthesis_figures(t2t / "eval_test.json", t2t / "metrics.jsonl")

    def text_lm(self) -> dict:
        """A text LM on text alone (the world's prose and the speech corpus's transcripts), exported
        as a Hugging Face model: the speech-text runs start from it as the paper starts from GLM-4-9B."""
        lm, section = self.w("text_lm"), self.p["lm"]
        texts = _read_jsonl(self.w("world", "corpus.jsonl")) + [
            {"text": r["text"]} for r in _read_jsonl(self.w("speech_tokens", "train.jsonl"))]
        atomic.write_text(lm / "bpe_corpus.jsonl", "".join(json.dumps({"text": r["text"]}) + "\n" for r in texts))
        # the text LM's own vocabulary: text only (one placeholder code: the tokenizer needs K >= 1)
        self.tool("build_tokenizer.py", lm / "tokenizer", "--train-on", lm / "bpe_corpus.jsonl",
                  "--text-vocab-size", section["text_vocab_size"], "--codebook-size", 1)
        self.tool("preprocess_data.py", self.w("world", "corpus.jsonl"), "--tokenizer", lm / "tokenizer",
                  "--output-prefix", lm / "data" / "world")
        self.tool("preprocess_data.py", self.w("speech_tokens", "train.jsonl"), "--tokenizer", lm / "tokenizer",
                  "--output-prefix", lm / "data" / "transcripts")
        sources = [{"prefix": str(lm / "data" / "world"), "weight": 0.8, "layout": "text"},
                   {"prefix": str(lm / "data" / "transcripts"), "weight": 0.2, "layout": "text"}]
        self.pretrain(self.training_config("text_lm", lm / "tokenizer", sources, section["text_lm_steps"], section,
                                           section["seq_length"]), "text_lm")
        self.tool("convert_checkpoint.py", "megatron-to-hf", "--checkpoint", lm / "checkpoints", "--tokenizer",
                  lm / "tokenizer", "--output", lm / "hf")
        return report.training_figures(lm / "metrics.jsonl")

    def synthesis_config(self) -> Path:
        """The synthesis YAML: the world's prose (``copies`` span draws a document) -> interleaved records,
        and indexed binaries in the speech-text LM's vocabulary."""
        s = self.p["synthesis"]
        config = {
            "inputs": [str(self.w("synthesis", "inputs.jsonl"))], "output_dir": str(self.w("synthesis", "records")),
            "checkpoint": str(self.w("text_to_token", "checkpoints")),
            "tokenizer": str(self.w("text_to_token", "tokenizer")),
            "indexed_prefix": str(self.w("data", "interleaved")), "indexed_tokenizer": str(self.w("lm_tokenizer")),
            "chunk_bytes": 1_000_000, "documents_per_batch": 256,
            "spans": {"ratio": s["ratio"], "mean_words": s["mean_words"], "distribution": "poisson", "seed": 0},
            "generation": {"batch_size": 64, "strategy": "greedy"},
        }
        path = self.w("configs", "synthesis.yaml")
        atomic.write_text(path, yaml.safe_dump(config, sort_keys=False))
        return path

    def synthesis(self) -> dict:
        """Interleaved records from the world's prose, and their indexed binaries in the speech-text LM's
        vocabulary (``speech_text_data``'s)."""
        world = _read_jsonl(self.w("world", "corpus.jsonl"))
        copies = [{"id": f"{d['id']}.{c}", "text": d["text"]} for c in range(self.p["synthesis"]["copies"]) for d in world]
        atomic.write_text(self.w("synthesis", "inputs.jsonl"), "".join(json.dumps(d) + "\n" for d in copies))
        config = self.synthesis_config()
        self.tool("synthesize_interleaved.py", "--config", config)
        self.tool("synthesize_interleaved.py", "--config", config, "--finalize")
        stats = json.loads(self.w("synthesis", "records", "stats.json").read_text())
        figures = {k: stats[k] for k in ("documents", "spans", "rejected", "speech_tokens", "text_tokens",
                                         "speech_tokens_per_s") if k in stats}
        return {**figures, "indexed_tokens": report.indexed_tokens(self.w("data", "interleaved"))}

    def speech_text_data(self) -> dict:
        """The speech-text LM's vocabulary (the text LM's text ids, then the speech tokenizer's codes) and
        the text, speech-only, ASR and TTS binaries in it: everything but the interleaved data, so the
        synthesis settings reach none of it (``fork.py``)."""
        tokenizer, tokens = self.w("lm_tokenizer"), self.w("speech_tokens", "train.jsonl")
        self.tool("build_tokenizer.py", tokenizer, "--text-tokenizer",
                  self.w("text_lm", "tokenizer", "trained_text_tokenizer.json"), "--codebook-of", tokens)
        self.tool("preprocess_data.py", self.w("world", "corpus.jsonl"), "--tokenizer", tokenizer,
                  "--output-prefix", self.w("data", "text"))
        for layout in ("speech", "asr", "tts"):
            self.tool("preprocess_data.py", tokens, "--tokenizer", tokenizer, "--output-prefix", self.w("data", layout),
                      "--layout", layout)
        return {name: report.indexed_tokens(self.w("data", name)) for name in ("text", "speech", "asr", "tts")}

    def spoken_tasks(self) -> dict:
        """The evaluation's questions and stories spoken by a voice no training utterance uses."""
        voice = self.p["evaluation"]["held_out_voice"]
        figures = {}
        for name in ("qa", "qa_shots", "cloze", "fact_choice", "fact_control"):
            output = self.w("tasks", f"{name}_spoken.jsonl")
            self.tool("build_spoken_task.py", self.w("world", f"{name}.jsonl"), output, "--speech-tokenizer",
                      self.speech_tokenizer, "--voices", voice)
            figures[name] = _count_lines(output)
        return figures

    def tasks(self, modalities: list[str]) -> list[dict]:
        """The QA, fact and story tasks: their spoken files, or for text alone the world's own files (a text
        LM's vocabulary has no speech codes to check the spoken fields against)."""
        e = self.p["evaluation"]

        def file(name: str) -> str:
            return str(self.w("world", f"{name}.jsonl") if modalities == ["t2t"] else self.w("tasks", f"{name}_spoken.jsonl"))

        qa = {"name": "spoken_qa", "file": file("qa"), "modalities": modalities,
              "few_shot": e["few_shot"], "shots_file": file("qa_shots"),
              "limit": e["qa_limit"], "max_text_tokens": e.get("max_text_tokens", 16),
              "max_speech_tokens": e.get("max_speech_tokens", 120)}
        cloze = {"name": "story_cloze", "file": file("cloze"), "modalities": modalities,
                 "limit": e["cloze_limit"]}
        # every asked fact: ranking is fast (a few seconds a hundred items), and an accuracy near chance
        # needs the items to tell arms apart
        facts = [{"name": name, "file": file(name), "modalities": modalities} for name in ("fact_choice", "fact_control")]
        return [qa, *facts, cloze]

    def evaluate(self, name: str, model: dict, modalities: list[str], output: Path) -> None:
        config = {"model": model, "speech_tokenizer": str(self.speech_tokenizer),
                  "batch_size": self.p["evaluation"]["batch_size"], "output": str(output),
                  "tasks": self.tasks(modalities)}
        path = self.w("configs", f"{name}.yaml")
        atomic.write_text(path, yaml.safe_dump(config, sort_keys=False))
        self.tool("evaluate.py", "--config", path)

    def evaluate_text_lm(self) -> dict:
        """The text LM on the text tasks: how much of the world it knows before any speech."""
        output = self.w("text_lm", "eval.json")
        self.evaluate("evaluate_text_lm", {"hf": str(self.w("text_lm", "hf")),
                                           "tokenizer": str(self.w("text_lm", "tokenizer"))}, ["t2t"], output)
        return report.task_figures(output)

    def arm_sources(self, arm: str) -> list[dict]:
        """Arm A's mixture; B adds interleaved data as ``interleaved_share`` of the samples, B-half half
        that share (the other sources keep their proportions)."""
        share = self.p["interleaved_share"] * ARMS[arm]
        sources = [{"prefix": str(self.w("data", name)), "weight": weight * (1 - share), "layout": name}
                   for name, weight in _normalised(self.p["mixture"]).items()]
        if share:
            sources.append({"prefix": str(self.w("data", "interleaved")), "weight": share, "layout": "interleaved"})
        return sources

    @property
    def warmup_steps(self) -> int:
        return int(self.p["lm"].get("speech_warmup_steps", 0))

    def speech_warmup(self) -> dict:
        """The text LM trained on arm A's mixture (text, speech, ASR, TTS: no interleaved data) once,
        for the arms to start from. Why: at this scale no arm learns to map speech to words in its own
        steps (examples/mini/README.md), so the arms could only differ in how they read noise; after a
        shared warm-up they still differ in the interleaved data alone."""
        section = self.p["lm"]
        config = self.training_config("speech_warmup", self.w("lm_tokenizer"), self.arm_sources("A"), self.warmup_steps,
                                      section, section["seq_length"],
                                      init={"hf_checkpoint": str(self.w("text_lm", "hf")), "seed": 0})
        self.pretrain(config, "speech_warmup")
        return report.training_figures(self.w("speech_warmup", "metrics.jsonl"))

    def evaluate_speech_text_model(self, name: str, folder: Path) -> dict:
        """A speech-text model's checkpoints (``folder/checkpoints``) on every task and modality, into
        ``folder/eval.json``."""
        self.evaluate(name, {"checkpoint": str(folder / "checkpoints"), "tokenizer": str(self.w("lm_tokenizer"))},
                      ["s2t", "s2s", "t2t"], folder / "eval.json")
        return report.task_figures(folder / "eval.json")

    def evaluate_speech_warmup(self) -> dict:
        """The warm-up's weights: where the arms start from, so that what their own steps (with or
        without interleaved data) changed can be told from what they inherited."""
        return self.evaluate_speech_text_model("evaluate_speech_warmup", self.w("speech_warmup"))

    def arm_init(self, seed: int) -> dict:
        """Where an arm starts: the speech warm-up's weights if the preset has one, else the text LM
        (its vocabulary expanded by the speech codes, new rows drawn with ``seed``)."""
        if self.warmup_steps:
            return {"megatron_checkpoint": str(self.w("speech_warmup", "checkpoints"))}
        return {"hf_checkpoint": str(self.w("text_lm", "hf")), "seed": seed}

    def arm_section(self) -> dict:
        """The arms' model/optim/schedule. After a warm-up the arms take ``lm.optim_after_warmup``
        over ``lm.optim``: restarting the warm-up's schedule (up to the peak learning rate again)
        undid part of what the warm-up had learned (README, session 29)."""
        section = self.p["lm"]
        after = section.get("optim_after_warmup")
        if self.warmup_steps and after:
            return {**section, "optim": {**section["optim"], **after}}
        return section

    def speech_text_pretrain(self, arm: str, seed: int) -> dict:
        section, name = self.arm_section(), f"arms/{arm}_seed{seed}"
        config = self.training_config(name, self.w("lm_tokenizer"), self.arm_sources(arm), section["speech_text_steps"],
                                      section, section["seq_length"], seed, init=self.arm_init(seed))
        self.pretrain(config, f"pretrain_{arm}_seed{seed}")
        steps, batch = section["speech_text_steps"], section["schedule"]["global_batch_size"]
        interleaved = self.p["interleaved_share"] * ARMS[arm] * steps * batch * section["seq_length"]
        return {**report.training_figures(self.arm_dir(arm, seed) / "metrics.jsonl"), "interleaved_tokens": interleaved}

    def evaluate_arm(self, arm: str, seed: int) -> dict:
        return self.evaluate_speech_text_model(f"evaluate_{arm}_seed{seed}", self.arm_dir(arm, seed))


# ---- the driver -------------------------------------------------------------------------------


def run(recipe: Recipe) -> dict:
    """Every stage not finished yet, in order; returns each stage's record."""
    stages = recipe.stages()
    records, start = {}, time.perf_counter()
    forked = recipe.w(fork.RECORD).exists()
    for number, (name, stage) in enumerate(stages, 1):
        marker = recipe.w("stages", f"{name}.json")
        if marker.exists():
            records[name] = json.loads(marker.read_text())
            print(f"[mini {number}/{len(stages)}] {name}: done earlier, skipped", flush=True)
            continue
        print(f"[mini {number}/{len(stages)}] {name} (total {_minutes(time.perf_counter() - start)} so far)", flush=True)
        began = time.perf_counter()
        if forked:  # files linked from the source folder become this folder's own before a tool writes them
            fork.unshare(recipe.work, recipe.outputs(name))
        try:
            figures = stage()
        except StageFailed as exc:
            raise SystemExit(f"[mini] stage {name} failed: {exc}. Rerun the same command to resume it.") from None
        records[name] = {"seconds": round(time.perf_counter() - began, 1), "figures": figures}
        atomic.write_json(marker, records[name])
        print(f"[mini {number}/{len(stages)}] {name} done in {_minutes(records[name]['seconds'])}: "
              f"{report.one_line(figures)}", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", help="quick (default), full or tiny: examples/mini/presets.yaml")
    parser.add_argument("--work", help="work folder (default: work/mini/<preset>)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the tools")
    config_loader.add_overrides_argument(parser)  # a preset value, e.g. lm.speech_warmup_steps=10000
    parser.add_argument("--adopt", action="store_true",
                        help="claim a work folder whose stages were made before settings were recorded")
    parser.add_argument("--from", dest="source", metavar="SOURCE",
                        help="start --work from SOURCE's finished stages that these settings do not reach "
                             "(hard links; examples/mini/fork.py)")
    args = parser.parse_args()
    work = Path(args.work or ROOT / "work" / "mini" / args.preset).resolve()
    recipe = Recipe(args.preset, work, args.python, args.set)
    if args.source:
        fork.source_settings(Path(args.source))  # refused before this folder is claimed
    try:
        with jobs.exclusive_lock(work / "run.lock", f"{work} is in use"):
            claim_work_folder(recipe, args.adopt)
            if args.source:
                with jobs.exclusive_lock(Path(args.source).resolve() / "run.lock", f"{args.source} is in use"):
                    kept = fork.fork(recipe, Path(args.source), SELECTION)
                print(f"[mini] {work}: from {args.source}, {len(kept)} finished stages kept: "
                      f"{', '.join(kept) or 'none'}", flush=True)
            records = run(recipe)
            summary = report.write(recipe, records)
    except jobs.JobError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(summary)


def claim_work_folder(recipe: Recipe, adopt: bool = False) -> None:
    """A work folder's stages belong to one preset's settings: the folder is claimed as a job whose
    fingerprint is those settings, and a run with others is refused (the differing keys named) rather
    than mixing stages made under both in one report. Which seeds and arms run is a selection, not a
    setting: each arm's stages are its own, so a folder takes more (or fewer) of them and records the
    new selection. A folder with finished stages and no record is refused unless ``adopt``: its
    settings are unknown, and adopting them silently would let one report mix two presets."""
    settings = recipe.settings()
    job = jobs.Job(recipe.work, "mini recipe", jobs.fingerprint(settings), {"settings": settings},
                   remedy="use another --work, or the same preset and --set values")
    if job.recorded_fingerprint() is None and any(recipe.w("stages").glob("*.json")) and not adopt:
        raise SystemExit(f"error: {recipe.work} holds finished stages but no {jobs.JOB_FILE} (made before "
                         "settings were recorded): its settings are unknown; use another --work, or --adopt "
                         "to claim it for this run's settings")
    try:
        job.claim()
    except jobs.JobError as exc:
        before = json.loads((recipe.work / jobs.JOB_FILE).read_text()).get("settings", {})
        differing = config_loader.differing_keys(before, settings)
        if not set(differing) <= SELECTION:
            raise SystemExit(f"error: {exc}. Differing: {', '.join(differing)}") from None
        job.record()
        print(f"[mini] {recipe.work}: seeds {settings['seeds']}, arms {settings['arms']} "
              f"(was seeds {before.get('seeds')}, arms {before.get('arms')}); finished stages are kept", flush=True)


def _arm_stage(name: str) -> tuple[str, str, int]:
    """``pretrain_B-half_seed2`` -> ("pretrain", "B-half", 2)."""
    kind, rest = name.split("_", 1)
    arm, seed = rest.rsplit("_seed", 1)
    return kind, arm, int(seed)


def _has_key(values: dict, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(values, dict) or key not in values:
            return False
        values = values[key]
    return True


def _flags(values: dict) -> list[str]:
    return [x for key, value in values.items() for x in (f"--{key.replace('_', '-')}", str(value))]


def _read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _count_lines(path: Path) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def _normalised(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


if __name__ == "__main__":
    main()

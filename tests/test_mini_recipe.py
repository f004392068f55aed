"""The paper in miniature at its tiny preset: every stage runs through the real tools, a killed run
resumes at the stage it stopped in, and the report has its shape (not its numbers: a few steps)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "examples" / "mini" / "run.py"

pytestmark = pytest.mark.slow


def _start(work: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN), "--preset", "tiny", "--work", str(work)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_the_tiny_preset_runs_every_stage_and_resumes_after_a_kill(tmp_path):
    work = tmp_path / "mini"
    first = _start(work)
    seen = []
    for line in first.stdout:  # killed while it trains the speech tokenizer
        seen.append(line)
        if line.startswith("[mini 3/16] speech_tokenizer ("):
            os.killpg(first.pid, signal.SIGKILL)
            break
    first.wait(timeout=60)
    assert first.returncode != 0, "".join(seen)
    stages = sorted(p.stem for p in (work / "stages").glob("*.json"))
    assert stages == ["speech_corpus", "world"]

    second = subprocess.run([sys.executable, str(RUN), "--preset", "tiny", "--work", str(work)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-5000:]
    assert "[mini 1/16] world: done earlier, skipped" in log
    assert "[mini 2/16] speech_corpus: done earlier, skipped" in log
    assert "[mini 3/16] speech_tokenizer (" in log  # resumed in the stage it stopped in

    # every stage's outputs, from the tools that made them
    assert len(list((work / "stages").glob("*.json"))) == 16
    for path in ("world/qa.jsonl", "world/qa_shots.jsonl", "speech_corpus/train.jsonl",
                 "speech_tokenizer/whisper_vq/whisper_vq.nemo", "speech_tokens/train.jsonl",
                 "text_to_token/eval_test.json", "text_lm/hf/config.json", "lm_tokenizer/speech_text_tokenizer.json",
                 "data/interleaved.bin", "data/asr.bin", "tasks/qa_spoken.jsonl", "tasks/cloze_spoken.jsonl",
                 "tasks/fact_choice_spoken.jsonl", "tasks/fact_control_spoken.jsonl",
                 "speech_warmup/eval.json", "arms/A_seed0/eval.json", "arms/B_seed0/eval.json", "report.md",
                 "ablation.png"):
        assert (work / path).is_file(), path
    text_lm = json.loads((work / "text_lm" / "hf" / "config.json").read_text())
    lm_vocab = json.loads((work / "lm_tokenizer" / "speech_text_tokenizer.json").read_text())
    assert lm_vocab["codebook_size"] == 32 and text_lm["vocab_size"] < lm_vocab["vocab_size"]  # expanded
    # arm A never sees interleaved data, arm B does
    sources = {arm: [s["layout"] for s in _yaml(work / "configs" / f"pretrain_{arm}_seed0.yaml")["data"]["sources"]]
               for arm in ("A", "B")}
    assert "interleaved" not in sources["A"] and sources["B"][-1] == "interleaved"
    # the speech warm-up (tiny preset: 2 steps) trains on arm A's mixture from the text LM, and the arms
    # start from its weights
    warmup = _yaml(work / "configs" / "speech_warmup.yaml")
    assert [s["layout"] for s in warmup["data"]["sources"]] == sources["A"]
    assert warmup["init"]["hf_checkpoint"] == str(work / "text_lm" / "hf")
    assert (work / "speech_warmup" / "checkpoints" / "latest").exists()
    preset = _yaml(Path("examples/mini/presets.yaml"))["tiny"]["lm"]
    assert warmup["optim"] == preset["optim"]
    for arm in ("A", "B"):
        config = _yaml(work / "configs" / f"pretrain_{arm}_seed0.yaml")
        assert config["init"] == {"megatron_checkpoint": str(work / "speech_warmup" / "checkpoints")}
        # ...and go on at the warm-up's final learning rate instead of climbing to its peak again
        assert config["optim"] == {**preset["optim"], **preset["optim_after_warmup"]}
        assert config["optim"]["lr"] <= preset["optim"]["min_lr"]

    report = json.loads((work / "report.json").read_text())
    assert set(report["stages"]) == {p.stem for p in (work / "stages").glob("*.json")}
    assert [(a["arm"], a["seed"]) for a in report["arms"]] == [("A", 0), ("B", 0)]
    expected = {f"{task}_{m}" for task in ("spoken_qa", "fact_choice", "fact_control", "story_cloze")
                for m in ("s2t", "s2s", "t2t")}
    for arm in report["arms"]:
        assert set(arm["scores"]) == expected and all(0 <= v <= 1 for v in arm["scores"].values())
    assert report["arms"][0]["interleaved_tokens"] == 0 < report["arms"][1]["interleaved_tokens"]
    tokenizer = report["stages"]["speech_tokenizer"]["figures"]
    assert {"wer_training_voices", "wer_held_out_voice"} <= set(tokenizer)
    assert "synthetic_span_wer" in report["stages"]["text_to_token"]["figures"]
    markdown = (work / "report.md").read_text()
    for row in ("| speech_tokenizer |", "| text_to_token |", "| evaluate_speech_warmup |",
                "| spoken_qa S→T (exact_match) |",
                "| story_cloze S→S (acc) |", "| fact_choice S→T (acc) |", "| loss_interleaved |"):
        assert row in markdown, row
    assert "| S→T job |" in markdown  # the facts by kind, above their controls

    # a finished run reruns nothing
    third = subprocess.run([sys.executable, str(RUN), "--preset", "tiny", "--work", str(work)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and third.stdout.count("done earlier, skipped") == 16, third.stdout[-3000:]

    # another span ratio from this folder: only the synthesis and arm B's stages run again
    forked = tmp_path / "ratio"
    fourth = subprocess.run([sys.executable, str(RUN), "--preset", "tiny", "--work", str(forked), "--from", str(work),
                             "--set", "synthesis.ratio=0.6"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    log = fourth.stdout + fourth.stderr
    assert fourth.returncode == 0, log[-5000:]
    ran = sorted(line.split()[2] for line in fourth.stdout.splitlines() if " done in " in line)
    assert ran == ["evaluate_B_seed0", "pretrain_B_seed0", "synthesis"], log[-3000:]
    assert fourth.stdout.count("done earlier, skipped") == 13
    assert os.path.samefile(forked / "data" / "asr.bin", work / "data" / "asr.bin")
    assert not os.path.samefile(forked / "data" / "interleaved.bin", work / "data" / "interleaved.bin")
    assert _yaml(forked / "configs" / "synthesis.yaml")["spans"]["ratio"] == 0.6
    assert f"Started from {work} (differing: synthesis.ratio)" in (forked / "report.md").read_text()
    arms = json.loads((forked / "report.json").read_text())["arms"]
    assert [(a["arm"], a["seed"]) for a in arms] == [("A", 0), ("B", 0)]


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())

"""Evaluation suite: likelihood scores, prompt layouts, QA decoding and scoring, TP and HF agreement,
task-file errors, and the spoken task builder."""

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_speech.data.corpus import CorpusError
from megatron_speech.data.default_corpus import default_documents
from megatron_speech.data.layouts import layout_ids, parse_record
from megatron_speech.data.preprocess import PreprocessConfig, preprocess
from megatron_speech.evaluation import qa
from megatron_speech.evaluation.prompts import likelihood_requests, qa_prompt
from megatron_speech.evaluation.tasks import LikelihoodItem, QAItem, read_task
from megatron_speech.testing.multiprocess import run_processes
from megatron_speech.testing.tiny import tiny_train_config, train_in_process

REPO = Path(__file__).resolve().parents[1]
ENDINGS = ["apple", "river", "stone", "cloud", "tiger", "violin", "garden", "lamp", "ocean", "pencil", "rocket",
           "winter"]


def _stories(codebook_size: int) -> list[dict]:
    """Twelve stories: a context (text, and random speech codes) and a one-word ending (with codes)."""
    rng = np.random.default_rng(3)
    word_codes = {w: rng.integers(0, codebook_size, 3).tolist() for w in ENDINGS}
    stories = []
    for i, ending in enumerate(ENDINGS):
        context = " ".join(default_documents()[40 + i].split()[:10])
        stories.append({"context": context, "ending": ending, "context_codes": rng.integers(0, codebook_size, 12).tolist(),
                        "ending_codes": word_codes[ending]})
    return stories


def _task_records(stories: list[dict]) -> list[dict]:
    """Two candidates each: the story's own ending (first or second by turns) and the next story's."""
    records = []
    for i, story in enumerate(stories):
        other = stories[(i + 1) % len(stories)]
        pair = [story, other] if i % 2 == 0 else [other, story]
        records.append({"id": f"story{i}", "context": story["context"], "candidates": [s["ending"] for s in pair],
                        "answer": i % 2, "context_speech_tokens": story["context_codes"],
                        "candidates_speech_tokens": [s["ending_codes"] for s in pair]})
    return records


@pytest.fixture(scope="session")
def story_model(prepared, tmp_path_factory):
    """A tiny model trained on the stories in every layout it is evaluated in: (root, task file, tokenizer)."""
    root, tokenizer = prepared
    work = tmp_path_factory.mktemp("stories")
    stories = _stories(tokenizer.codebook_size)
    documents = []
    for story in stories:
        documents += [{"segments": [{"text": f"{story['context']} {story['ending']}"}]},
                      {"segments": [{"audio": story["context_codes"]}, {"text": f" {story['ending']}"}]},
                      {"segments": [{"audio": story["context_codes"] + story["ending_codes"]}]}]
    (work / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents * 20))
    preprocess(PreprocessConfig([str(work / "train.jsonl")], str(work / "train"), str(root / "tokenizer"),
                                layout="interleaved"))
    values = tiny_train_config(root, steps=120, global_batch_size=16, micro_batch_size=8)
    values["data"] = {"sources": [{"prefix": str(work / "train"), "layout": "interleaved"}], "seq_length": 64}
    values["checkpoint"] = {"dir": str(work / "ckpt")}
    run_processes(train_in_process, 1, values)
    task = work / "cloze.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in _task_records(stories)))
    return work, task, tokenizer


def _config(work: Path, task: Path, root: Path, **model) -> dict:
    source = model or {"checkpoint": str(work / "ckpt"), "tokenizer": str(root / "tokenizer")}
    return {"model": source, "batch_size": 5,
            "tasks": [{"name": "cloze", "file": str(task), "modalities": ["s2s", "s2t", "t2t"]}]}


def _evaluate(values: dict, tensor_parallel: int = 1) -> dict:
    """Run an evaluation in this (spawned) process: the summary and each item's log-probabilities."""
    from megatron_speech import config_loader
    from megatron_speech import parallel as par
    from megatron_speech.evaluation.run import EvalConfig, evaluate

    values = {**values, "model": {**values["model"], "tensor_model_parallel_size": tensor_parallel}}
    config = config_loader.build(EvalConfig, values)
    par.init_distributed(config.model.parallel())
    try:
        return evaluate(config)
    finally:
        par.shutdown()


def _logprobs(report: dict) -> dict:
    return {m: [r["logprobs"] for r in result["results"]]
            for m, result in report["tasks"]["cloze"]["modalities"].items()}


# ---- likelihood ---------------------------------------------------------------------------------


def _hand_scores(work: Path, root: Path, task: Path) -> dict:
    """Each candidate's log-probability computed by hand from the model's logits, one sequence at a time."""
    from megatron_speech import parallel as par
    from megatron_speech.checkpoints.trained import load_trained_model
    from megatron_speech.lm_tokenizer import SpeechTextTokenizer
    from megatron_speech.models.gpt import full_logits

    tokenizer = SpeechTextTokenizer.load(root / "tokenizer")
    par.init_distributed(par.ParallelConfig())
    model, _, _ = load_trained_model(str(work / "ckpt"), tokenizer)
    model.eval()
    _, items = read_task(task)
    out = {}
    for modality in ("s2s", "s2t", "t2t"):
        rows = []
        for item in items:
            scores = []
            for prefix, continuation in likelihood_requests(item, modality, tokenizer):
                sequence = torch.tensor([prefix + continuation])
                with torch.no_grad():
                    probs = torch.softmax(full_logits(model, sequence)[0].double(), dim=-1)
                total = sum(float(torch.log(probs[len(prefix) + j - 1, t])) for j, t in enumerate(continuation))
                scores.append(total)
            rows.append(scores)
        out[modality] = rows
    par.shutdown()
    return out


def test_likelihood_scores_equal_a_hand_computation_and_the_trained_ending_wins(prepared, story_model):
    root, _ = prepared
    work, task, _ = story_model
    report = run_processes(_evaluate, 1, _config(work, task, root))[0]
    hand = run_processes(_hand_scores, 1, work, root, task)[0]
    scored = _logprobs(report)
    for modality in ("s2s", "s2t", "t2t"):
        assert np.allclose(scored[modality], hand[modality], atol=2e-3), modality  # logprobs rounded to 1e-4
        summary = report["tasks"]["cloze"]["modalities"][modality]
        # trained on the stories: the own ending is the likelier one, whichever place it has
        assert summary["acc"] >= 0.75, (modality, summary["acc"])
        assert summary["items"] == 12 and summary["items_per_s"] > 0


@pytest.mark.slow  # a 2-process evaluation and an HF export
def test_tensor_parallel_and_hf_export_give_the_same_scores(prepared, story_model, tmp_path):
    root, _ = prepared
    work, task, _ = story_model
    single = run_processes(_evaluate, 1, _config(work, task, root))[0]
    split = run_processes(_evaluate, 2, _config(work, task, root), 2)
    assert _logprobs(split[0]) == _logprobs(split[1])  # every rank computes the same scores
    hf = tmp_path / "hf"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "megatron-to-hf",
                             "--checkpoint", str(work / "ckpt"), "--tokenizer", str(root / "tokenizer"),
                             "--output", str(hf)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = run_processes(_evaluate, 1, _config(work, task, root, hf=str(hf)))[0]
    for other in (split[0], exported):
        for modality, rows in _logprobs(single).items():
            assert np.allclose(rows, _logprobs(other)[modality], atol=2e-3), modality
        for modality, summary in single["tasks"]["cloze"]["modalities"].items():
            mine = other["tasks"]["cloze"]["modalities"][modality]
            assert [r["chosen"] for r in summary["results"]] == [r["chosen"] for r in mine["results"]]


# ---- prompt layouts -----------------------------------------------------------------------------


def test_prompts_are_laid_out_as_the_pre_training_layouts(speech_tokenizer):
    tok = speech_tokenizer
    item = LikelihoodItem("x", "the cat sat", ("on the mat", "in space"), 0, (1, 2, 3), ((4, 5), (6,)))
    # S→T: the interleaved layout of <speech context> " ending" (text after speech keeps its space)
    for (prefix, continuation), ending in zip(likelihood_requests(item, "s2t", tok), item.candidates):
        record = {"segments": [{"audio": [1, 2, 3]}, {"text": " " + ending}]}
        assert prefix + continuation + [tok.eod] == [tok.eod] + layout_ids(tok, parse_record("interleaved", record, 64, "-", 1))
        assert continuation == tok.encode(parse_record("interleaved", {"segments": [{"text": " " + ending}]}, 64, "-", 1))
    # the ASR layout is the same audio segment, then the transcript
    asr = layout_ids(tok, parse_record("asr", {"speech_tokens": [1, 2, 3], "text": "on the mat"}, 64, "-", 1))
    assert likelihood_requests(item, "s2t", tok)[0][0] == [tok.eod] + asr[: asr.index(tok.eoa) + 1]
    # S→S: one audio segment that goes on with the ending's codes (the speech layout without its end)
    (prefix, continuation), _ = likelihood_requests(item, "s2s", tok)
    speech = layout_ids(tok, parse_record("speech", {"speech_tokens": [1, 2, 3, 4, 5]}, 64, "-", 1))
    assert prefix + continuation == [tok.eod] + speech[:-2]
    # QA S→T: the question's audio inside the template's text; S→S ends where the spoken answer begins
    question = QAItem("q", "where is paris", ("france",), (7, 8), ((9,),))
    record = {"segments": [{"text": "Question: "}, {"audio": [7, 8]}, {"text": "\nAnswer:"}]}
    expected = [tok.eod] + layout_ids(tok, parse_record("interleaved", record, 64, "-", 1))[:-1]
    assert qa_prompt(question, "s2t", tok, "Question: {question}\nAnswer:") == expected
    spoken = qa_prompt(question, "s2s", tok, "Question: {question}\nAnswer:")
    record["segments"][-1]["text"] = "\nAnswer: "
    assert spoken == [tok.eod] + layout_ids(tok, parse_record("interleaved", record, 64, "-", 1))[:-1] + [tok.boa]
    # few-shot: the examples first, in the same modality, a blank line after each
    shot = QAItem("s", "capital of peru", ("lima",), (5,), ((6, 6),))
    record = {"segments": [{"text": "Question: "}, {"audio": [5]}, {"text": "\nAnswer: lima\n\nQuestion: "},
                           {"audio": [7, 8]}, {"text": "\nAnswer:"}]}
    assert qa_prompt(question, "s2t", tok, "Question: {question}\nAnswer:", [shot]) == \
        [tok.eod] + layout_ids(tok, parse_record("interleaved", record, 64, "-", 1))[:-1]


# ---- generative QA ------------------------------------------------------------------------------


class ScriptedModel(torch.nn.Module):
    """A stand-in for the GPT: at every position after the prompt it predicts the next id of a script,
    whatever it was fed, so the decoding loop's stopping is what is tested."""

    pre_process = post_process = True

    def __init__(self, vocab_size: int, prompt_length: int, script: list[int]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab_size, self.prompt_length, self.script = vocab_size, prompt_length, script

    def forward(self, tokens, positions, mask, inference_context=None, runtime_gather_output=True):
        if tokens.shape[1] > 1:
            self.prefilled = tokens[0].tolist()
        logits = torch.zeros(tokens.shape[0], tokens.shape[1], self.vocab_size)
        for i, position in enumerate(positions[0].tolist()):
            step = position + 1 - self.prompt_length
            if 0 <= step < len(self.script):
                logits[:, i, self.script[step]] = 10.0
        return logits


def test_qa_answers_stop_at_the_right_token_and_known_answers_score_right(speech_tokenizer):
    tok = speech_tokenizer
    prompt = qa_prompt(QAItem("q", "what is the capital of france", ("Paris",)), "t2t", tok, "Q: {question}\nA:")
    answer = tok.tokenize(" Paris")
    newline = tok.tokenize("\n")
    junk = tok.tokenize(" and more")
    model = ScriptedModel(tok.vocab_size, len(prompt), answer + newline + junk)
    generator = qa.AnswerGenerator(model, tok)
    ids = generator.generate([prompt], speech=False, batch_size=4, limit=20)[0]
    assert ids == answer + newline and generator.text_of(ids) == "Paris"
    # ends at end-of-document too, which is not part of the answer
    model.script = answer + [tok.eod] + junk
    assert generator.generate([prompt], speech=False, batch_size=4, limit=20)[0] == answer
    # a spoken answer: codes up to <|end_of_audio|>; text ids are not allowed there
    spoken = prompt + [tok.boa]
    model.prompt_length = len(spoken)
    model.script = [tok.audio_offset + 5, tok.audio_offset + 9, tok.eoa, tok.audio_offset + 1]
    assert generator.generate([spoken], speech=True, batch_size=4, limit=20)[0] == [5, 9]
    # scoring: normalised exact match, and "contains" as whole words
    assert qa.exact_match("The Paris.", ("paris",)) and not qa.exact_match("Paris, France", ("paris",))
    assert qa.contains_answer("it is Paris, France", ("paris",))
    assert not qa.contains_answer("Parisian food", ("paris",))
    results = [qa.item_result(QAItem("a", "q", ("Paris",)), "paris"), qa.item_result(QAItem("b", "q", ("Lima",)), "no")]
    assert qa.summarize(results) == {"items": 2, "exact_match": 0.5, "contains": 0.5}


class SpokenAnswers:
    """A stand-in speech tokenizer: transcribes any spoken answer as the codes' count in words."""

    def transcribe_tokens(self, codes):
        return [f"{len(c)} codes" for c in codes]


def test_a_qa_task_runs_with_few_shot_prompts_and_spoken_answers(speech_tokenizer, tmp_path):
    from megatron_speech.evaluation.model import ModelSource
    from megatron_speech.evaluation.run import EvalConfig, Evaluator, TaskConfig

    tok = speech_tokenizer
    records = [{"id": "s", "question": "capital of peru", "answers": ["lima"], "question_speech_tokens": [5],
                "answers_speech_tokens": [[6, 6]]},
               {"id": "q", "question": "capital of france", "answers": ["paris", "2 codes"],
                "question_speech_tokens": [7, 8]}]
    (tmp_path / "shots.jsonl").write_text(json.dumps(records[0]) + "\n")
    (tmp_path / "qa.jsonl").write_text(json.dumps(records[1]) + "\n")
    task = TaskConfig("qa", str(tmp_path / "qa.jsonl"), ["s2t", "s2s"], template="Q: {question}\nA:", few_shot=1,
                      shots_file=str(tmp_path / "shots.jsonl"))
    _, (shot,) = read_task(tmp_path / "shots.jsonl")
    _, (item,) = read_task(tmp_path / "qa.jsonl")
    model = ScriptedModel(tok.vocab_size, 0, [])
    evaluator = Evaluator(EvalConfig(ModelSource(hf="unused"), [task]), model, tok, 512, SpokenAnswers())
    text_prompt = qa_prompt(item, "s2t", tok, task.template, [shot])
    model.prompt_length, model.script = len(text_prompt), tok.tokenize(" Paris") + tok.tokenize("\n")
    first = evaluator.qa(task, [item], "s2t", [shot])[0][0]
    assert model.prefilled == text_prompt and first["prediction"] == "Paris" and first["exact_match"]
    spoken_prompt = qa_prompt(item, "s2s", tok, task.template, [shot])
    model.prompt_length, model.script = len(spoken_prompt), [tok.audio_offset + 3, tok.audio_offset + 4, tok.eoa]
    results, summary = evaluator.qa(task, [item], "s2s", [shot])
    assert model.prefilled == spoken_prompt and spoken_prompt[-1] == tok.boa
    assert results[0]["prediction"] == "2 codes" and results[0]["speech_tokens"] == 2 and summary["exact_match"] == 1.0
    # run_task reads the shots file and runs every modality; a shot without the speech S→S needs is refused
    assert set(evaluator.run_task(task)["modalities"]) == {"s2t", "s2s"}
    (tmp_path / "shots.jsonl").write_text(json.dumps({**records[0], "question_speech_tokens": None}) + "\n")
    with pytest.raises(ValueError, match="shots.jsonl: item 's' has no question_speech_tokens"):
        evaluator.run_task(task)



class CodesHeard:
    """A stand-in ASR judge: hears a wav as the number of 12.5 Hz codes its length holds."""

    name, identity, heard = "codes-heard", "codes-heard 1", []

    def transcribe(self, paths):
        CodesHeard.heard += [Path(p).name for p in paths]
        return [f"{round(wave.open(str(p)).getnframes() / 1280)} codes" for p in paths]


def _tiny_decoder(path: Path, codebook_size: int) -> Path:
    """A random token-to-mel model of the mini recipe's shape, small (decoding needs no training)."""
    from omegaconf import OmegaConf

    from megatron_speech.speech_decoder.model import SpeechDecoderModel

    cfg = OmegaConf.load(REPO / "examples" / "speech_decoder" / "conf" / "mini.yaml").model
    cfg.net = OmegaConf.merge(cfg.net, {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64,
                                        "codebook_size": codebook_size})
    cfg.update({"speakers": ["flite:slt", "flite:awb"], "token_rate": 12.5, "train_ds": None, "validation_ds": None})
    SpeechDecoderModel(cfg).save_to(str(path))
    return path


def test_spoken_answers_are_decoded_heard_by_a_judge_and_scored_beside_the_tokenizers_reading(
        speech_tokenizer, tmp_path, monkeypatch):
    from megatron_speech.evaluation.heard import HeardAnswersConfig
    from megatron_speech.evaluation.judges import JUDGES
    from megatron_speech.evaluation.model import ModelSource
    from megatron_speech.evaluation.run import EvalConfig, Evaluator, TaskConfig, table

    monkeypatch.setitem(JUDGES, "codes-heard", CodesHeard)
    tok = speech_tokenizer
    (tmp_path / "qa.jsonl").write_text(json.dumps({"id": "q", "question": "capital of france",
                                                   "answers": ["2 codes"], "question_speech_tokens": [7, 8]}) + "\n")
    task = TaskConfig("qa", str(tmp_path / "qa.jsonl"), ["s2s"], template="Q: {question}\nA:")
    decoder = _tiny_decoder(tmp_path / "decoder.nemo", tok.codebook_size)
    heard = HeardAnswersConfig(str(decoder), judge="codes-heard", voice="flite:awb")
    config = EvalConfig(ModelSource(hf="unused"), [task], heard_answers=heard, output=str(tmp_path / "report.json"))
    _, items = read_task(tmp_path / "qa.jsonl")
    model = ScriptedModel(tok.vocab_size, 0, [])
    evaluator = Evaluator(config, model, tok, 512, SpokenAnswers())
    model.prompt_length = len(qa_prompt(items[0], "s2s", tok, task.template))
    model.script = [tok.audio_offset + 3, tok.audio_offset + 4, tok.eoa]
    CodesHeard.heard = []
    results, summary = evaluator.qa(task, items, "s2s", [])
    assert results[0]["prediction"] == "2 codes" and results[0]["heard_prediction"] == "2 codes"
    assert summary["heard_exact_match"] == 1.0 and summary["heard_contains"] == 1.0
    (folder,) = (tmp_path / "report.json.answers").glob("qa-s2s-*")
    manifest = [json.loads(line) for line in (folder / "decoded" / "manifest.jsonl").read_text().splitlines()]
    assert [(m["id"], m["speaker"]) for m in manifest] == [("answer0", "flite:awb")] and CodesHeard.heard == ["answer0.wav"]
    wav = folder / "decoded" / manifest[0]["audio_filepath"]
    assert wave.open(str(wav)).getnframes() == 2 * 1280  # 2 codes, 5 frames each, hop 256
    # the same answers again: no decoding and no judging; the table shows both readings
    written = wav.stat().st_mtime_ns
    Evaluator(config, model, tok, 512, SpokenAnswers()).qa(task, items, "s2s", [])
    assert wav.stat().st_mtime_ns == written and CodesHeard.heard == ["answer0.wav"]
    report = {"tasks": {"qa": {"kind": "qa", "modalities": {"s2s": {**summary, "items_per_s": 1.0}}}}}
    assert "heard: EM 1.000" in table(report)
    # other answers get their own folder; no answer at all is heard as nothing, without audio
    model.script = [tok.audio_offset + 3, tok.eoa]
    assert evaluator.qa(task, items, "s2s", [])[0][0]["heard_prediction"] == "1 codes"
    model.script = [tok.eoa]
    result = evaluator.qa(task, items, "s2s", [])[0][0]
    assert result["heard_prediction"] == "" and not result["heard_exact_match"]
    assert len(list((tmp_path / "report.json.answers").glob("qa-s2s-*"))) == 2
    # a voice the decoder lacks, or a judge nobody has, is refused by name
    model.script = [tok.audio_offset + 5, tok.eoa]
    bad = EvalConfig(ModelSource(hf="unused"), [task], output=str(tmp_path / "bad.json"),
                     heard_answers=HeardAnswersConfig(str(decoder), judge="codes-heard", voice="flite:rms"))
    with pytest.raises(ValueError, match=r"'flite:rms' is not a voice of .*decoder.nemo"):
        Evaluator(bad, model, tok, 512, SpokenAnswers()).qa(task, items, "s2s", [])
    with pytest.raises(ValueError, match="heard_answers.judge must be one of"):
        HeardAnswersConfig(str(decoder), judge="nobody")
    with pytest.raises(ValueError, match="heard_answers needs audio_dir"):
        EvalConfig(ModelSource(hf="unused"), [task], heard_answers=heard)

# ---- task files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line, reason", [
    ('{"id": "a", "context": "x", "candidates": ["y"], "answer": 0}', "at least 2 strings"),
    ('{"id": "a", "context": "x", "candidates": ["y", "z"], "answer": 2}', "'answer' must be an index"),
    ('{"id": "a", "context": "x", "candidates": ["y", "z"], "answer": 0, "context_speech_tokens": [1, 99]}',
     "speech token 99"),
    ('{"id": "a", "context": "x", "candidates": ["y", "z"], "answer": 0, "candidates_speech_tokens": [[1]]}',
     "one list of speech tokens for each"),
    ('{"id": "story0", "context": "x", "candidates": ["y", "z"], "answer": 0}', "already used on line 1"),
    ('{"id": "a", "context": "x", "candidates": ["y", "z"], "answer": 0', "malformed JSON"),
])
def test_a_bad_task_record_is_named_by_file_and_line(tmp_path, line, reason):
    good = {"id": "story0", "context": "a", "candidates": ["b", "c"], "answer": 1}
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + line + "\n")
    with pytest.raises(CorpusError, match=reason) as info:
        read_task(path, codebook_size=64)
    assert str(info.value).startswith(f"{path}:3:")


def test_evaluation_refuses_items_without_the_speech_a_modality_needs(prepared, story_model, tmp_path):
    root, _ = prepared
    work, task, _ = story_model
    text_only = tmp_path / "text.jsonl"
    text_only.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if "speech" not in k}) + "\n"
                                 for line in task.read_text().splitlines()))
    with pytest.raises(RuntimeError, match="has no context_speech_tokens, which S→S needs"):
        run_processes(_evaluate, 1, _config(work, text_only, root))


# ---- spoken tasks -------------------------------------------------------------------------------


def _qa_file(path: Path) -> Path:
    items = [{"id": "q1", "question": "what is the capital of france", "answers": ["paris"], "source": "kept"},
             {"id": "q2", "question": "how many legs has a spider", "answers": ["eight", "8"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def test_a_spoken_task_is_built_from_voices_and_a_rerun_changes_nothing(tmp_path):
    from megatron_speech.data.speech_tokens import read_info
    from megatron_speech.evaluation.spoken import SpokenTaskConfig, build_spoken_task
    from megatron_speech.testing.tiny import FixedRateSpeechModel

    model = FixedRateSpeechModel()
    config = SpokenTaskConfig(str(_qa_file(tmp_path / "qa.jsonl")), str(tmp_path / "spoken.jsonl"), "unused.nemo",
                              voices=["flite:slt", "espeak:en-us"])
    summary = build_spoken_task(config, model, model.info)
    assert summary == {"kind": "qa", "items": 2, "utterances": 5, "output": config.output}
    records = [json.loads(line) for line in Path(config.output).read_text().splitlines()]
    assert records[0]["source"] == "kept" and records[0]["question"] == "what is the capital of france"
    for record in records:
        for field, paths in (("question", [record["question_audio"]]), ("answers", record["answers_audio"])):
            tokens = [record["question_speech_tokens"]] if field == "question" else record["answers_speech_tokens"]
            for path, codes in zip(paths, tokens):
                with wave.open(path) as w:  # one code per 80 ms of the wav the voice spoke
                    assert len(codes) == w.getnframes() // 1280 > 0
    assert read_info(config.output)["name"] == "fixed"
    kind, items = read_task(config.output, codebook_size=1)
    assert kind == "qa" and items[1].answers_speech is not None and len(items[1].answers_speech) == 2
    before = {p: p.stat().st_mtime_ns for p in Path(f"{config.output}.work").rglob("*.wav")}
    output = Path(config.output).read_bytes()
    build_spoken_task(config, model, model.info)
    assert Path(config.output).read_bytes() == output
    assert {p: p.stat().st_mtime_ns for p in Path(f"{config.output}.work").rglob("*.wav")} == before


def test_a_spoken_task_from_recorded_audio(tmp_path):
    from megatron_speech.evaluation.spoken import SpokenTaskConfig, build_spoken_task
    from megatron_speech.speech.audio import write_wav
    from megatron_speech.testing.tiny import FixedRateSpeechModel

    task = _qa_file(tmp_path / "qa.jsonl")
    write_wav(tmp_path / "q1.wav", np.ones(16000, np.int16), 16000)
    write_wav(tmp_path / "q2.wav", np.ones(8000, np.int16), 16000)
    manifest = tmp_path / "recorded.jsonl"
    lines = [{"audio_filepath": "q1.wav", "item": "q1", "field": "question"},
             {"audio_filepath": "q2.wav", "item": "q2", "field": "question"}]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    model = FixedRateSpeechModel()
    config = SpokenTaskConfig(str(task), str(tmp_path / "spoken.jsonl"), "unused.nemo", audio_manifest=str(manifest))
    build_spoken_task(config, model, model.info)
    _, items = read_task(config.output)
    assert [len(i.question_speech) for i in items] == [12, 6] and all(i.answers_speech is None for i in items)
    # half of a list field is refused, and a line naming a field the task lacks is named by line
    manifest.write_text(manifest.read_text() + json.dumps({"audio_filepath": "q2.wav", "item": "q2", "field": "answers.1"}) + "\n")
    with pytest.raises(ValueError, match="answers must be spoken whole or not at all"):
        build_spoken_task(config, model, model.info)
    manifest.write_text(json.dumps({"audio_filepath": "q2.wav", "item": "q9", "field": "question"}) + "\n")
    with pytest.raises(CorpusError, match=r"recorded\.jsonl:1: item 'q9' has no field 'question'"):
        build_spoken_task(config, model, model.info)


def test_the_example_config_parses_and_a_wrong_key_is_named():
    from megatron_speech import config_loader
    from megatron_speech.evaluation.run import EvalConfig

    config = config_loader.load(EvalConfig, REPO / "examples/evaluate/example.yaml")
    assert [t.name for t in config.tasks] == ["story_cloze", "spoken_qa"] and config.model.checkpoint
    with pytest.raises(config_loader.ConfigError, match=r"tasks\[0\]\.modality"):
        config_loader.load(EvalConfig, REPO / "examples/evaluate/example.yaml", ["tasks=[{name: a, file: b, modality: [s2s]}]"])
    with pytest.raises(config_loader.ConfigError, match="unknown modality 's2x'"):
        config_loader.load(EvalConfig, REPO / "examples/evaluate/example.yaml", ["tasks=[{name: a, file: b, modalities: [s2x]}]"])


def test_the_evaluate_tool_prints_a_table_and_writes_the_report(prepared, story_model, tmp_path):
    import yaml

    root, _ = prepared
    work, task, _ = story_model
    values = _config(work, task, root)
    values["tasks"][0]["modalities"] = ["s2t", "t2t"]
    values["output"] = str(tmp_path / "report.json")
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(values))
    result = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), "--config", str(tmp_path / "eval.yaml"),
                             "--set", "tasks.0.limit=4"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "tasks.0" in result.stderr  # a list is not a section: named, not guessed
    result = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), "--config", str(tmp_path / "eval.yaml"),
                             "--set", "batch_size=3"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("cloze")]
    assert [row[1] for row in rows] == ["S→T", "T→T"] and all(row[2] == "12" for row in rows)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["tasks"]["cloze"]["modalities"]) == {"s2t", "t2t"}
    assert len(report["tasks"]["cloze"]["modalities"]["t2t"]["results"]) == 12

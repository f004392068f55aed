"""The paper in miniature's preset overrides (``--set``) and the work folder's settings record: a folder
started with one preset's settings refuses a run with others, so no report mixes stages of both."""

import json
from pathlib import Path

import pytest


def test_set_overrides_a_nested_preset_value_parsed_as_yaml(mini, tmp_path):
    recipe = mini.Recipe("tiny", tmp_path, "python", ["lm.speech_warmup_steps=7", "seeds=[0, 1]"])
    assert recipe.p["lm"]["speech_warmup_steps"] == 7 and recipe.warmup_steps == 7
    assert recipe.p["seeds"] == [0, 1]
    names = [name for name, _ in recipe.stages()]
    assert names.index("speech_warmup") < names.index("pretrain_A_seed0")
    assert recipe.arm_init(1) == {"megatron_checkpoint": str(tmp_path / "speech_warmup" / "checkpoints")}


def test_without_a_warmup_the_arms_start_from_the_text_lm(mini, tmp_path):
    recipe = mini.Recipe("tiny", tmp_path, "python", ["lm.speech_warmup_steps=0"])
    assert "speech_warmup" not in [name for name, _ in recipe.stages()]
    assert recipe.arm_init(2) == {"hf_checkpoint": str(tmp_path / "text_lm" / "hf"), "seed": 2}


@pytest.mark.parametrize("bad", ["nosuchkey=1", "lm", "=3", "nosuch.section=1", "seeds.x=1", "lm.speech_warmup_step=5"])
def test_a_bad_override_is_refused_by_name(mini, tmp_path, bad):
    with pytest.raises(SystemExit, match="--set"):
        mini.Recipe("tiny", tmp_path, "python", [bad])


def test_a_work_folder_refuses_other_settings_and_names_them(mini, tmp_path):
    mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python"))
    recorded = json.loads((tmp_path / "job.json").read_text())["settings"]
    assert recorded["preset"] == "tiny" and recorded["lm"]["speech_warmup_steps"] == 2
    mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python"))  # the same settings: accepted
    mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python", ["lm.speech_warmup_steps=2"]))  # unchanged value
    with pytest.raises(SystemExit, match=r"[Dd]iffering: lm\.speech_warmup_steps, lm\.text_lm_steps"):
        mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python",
                                           ["lm.speech_warmup_steps=5", "lm.text_lm_steps=9"]))
    with pytest.raises(SystemExit, match="another --work.*[Dd]iffering: .*preset"):
        mini.claim_work_folder(mini.Recipe("quick", tmp_path, "python"))
    assert json.loads((tmp_path / "job.json").read_text())["settings"] == recorded  # the record is kept


def test_a_work_folder_takes_more_seeds_and_arms_and_records_them(mini, tmp_path, capsys):
    mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python", ["seeds=[0]"]))
    mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python", ["seeds=[0, 1, 2]", "arms=[A, B-half, B]"]))
    recorded = json.loads((tmp_path / "job.json").read_text())
    assert recorded["settings"]["seeds"] == [0, 1, 2] and recorded["settings"]["arms"] == ["A", "B-half", "B"]
    assert "finished stages are kept" in capsys.readouterr().out
    mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python", ["seeds=[0, 1, 2]", "arms=[A, B-half, B]"]))
    # a setting changed too: refused
    with pytest.raises(SystemExit, match=r"[Dd]iffering: arms, lm\.speech_text_steps, seeds$"):
        mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python", ["seeds=[5]", "lm.speech_text_steps=9"]))
    assert json.loads((tmp_path / "job.json").read_text()) == recorded


def test_a_folder_with_stages_and_no_settings_record_is_refused_unless_adopted(mini, tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "world.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"no job\.json.*--adopt"):
        mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python"))
    assert not (tmp_path / "job.json").exists()
    mini.claim_work_folder(mini.Recipe("tiny", tmp_path, "python"), adopt=True)
    assert json.loads((tmp_path / "job.json").read_text())["settings"]["preset"] == "tiny"
    mini.claim_work_folder(mini.Recipe("tiny", tmp_path / "empty", "python"))  # a new folder needs no adopting


def test_the_mapping_curve_averages_each_window_and_counts_a_resumed_step_once(mini, tmp_path):
    report = mini.report

    def step(n: int, asr_text: float, tts_text: float) -> dict:
        return {"step": n, "split": "train", "loss": 1.0, "source_target_losses": {
            "asr": {"text": asr_text, "speech": 3.0}, "tts": {"text": tts_text, "speech": 2.0},
            "text": {"text": 0.1, "speech": None}}}

    records = [step(1, 5.0, 5.0), step(2, 4.0, 5.0), step(3, 9.0, 9.0), step(3, 3.0, 4.0), step(4, 2.0, 4.0),
               {"step": 4, "split": "valid", "loss": 7.0}, {"step": 5, "split": "train", "loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = report.mapping_curve(tmp_path / "metrics.jsonl", window=2)
    assert [(r["first_step"], r["last_step"]) for r in rows] == [(1, 2), (3, 4)]
    assert rows[0]["transcript_after_speech"] == 4.5 and rows[0]["transcript_alone"] == 5.0
    assert rows[1]["transcript_after_speech"] == 2.5 and rows[1]["transcript_alone"] == 4.0  # step 3's newest record
    assert rows[1]["speech_after_transcript"] == 2.0 and rows[1]["speech_alone"] == 3.0


def test_a_given_speech_tokenizer_is_copied_in_and_evaluated_not_trained(mini, tmp_path, monkeypatch):
    trained = tmp_path / "elsewhere" / "tok.nemo"
    trained.parent.mkdir()
    trained.write_bytes(b"weights")
    trained.with_suffix(".eval.json").write_text(json.dumps({"steps": 2200, "cut_short": True}))
    recipe = mini.Recipe("tiny", tmp_path / "work", "python", [f"speech_tokenizer_model={trained}"])
    calls = []

    def tool(script, *args):  # what evaluate_speech_tokenizer.py writes, from the copied model
        calls.append(script)
        assert Path(args[0]).read_bytes() == b"weights"
        results = [{"manifest": Path(m).name, "wer": w, "codebook_usage": 0.9} for m, w in zip(args[1:3], (0.1, 0.2))]
        Path(args[args.index("--output") + 1]).write_text(json.dumps({"results": results}))

    monkeypatch.setattr(recipe, "tool", tool)
    figures = recipe.train_speech_tokenizer()
    assert calls == ["evaluate_speech_tokenizer.py"]  # no training
    assert recipe.speech_tokenizer.read_bytes() == b"weights"
    assert figures["wer_training_voices"] == 0.1 and figures["wer_held_out_voice"] == 0.2
    assert figures["steps"] == 2200 and figures["adopted"] == str(trained)
    assert figures["cut_short"]  # the training run's time guard stopped it: the report must still warn
    missing = mini.Recipe("tiny", tmp_path / "w2", "python", [f"speech_tokenizer_model={tmp_path / 'nope.nemo'}"])
    with pytest.raises(mini.StageFailed, match="nope.nemo: no such file"):
        missing.train_speech_tokenizer()


def test_the_facts_are_scored_by_kind_above_their_controls_and_averaged_over_seeds(mini, tmp_path):
    report = mini.report
    world = tmp_path / "world"
    world.mkdir()
    for task, prefix in (("fact_choice", "f"), ("fact_control", "c")):
        items = [{"id": f"{prefix}{i}", "fact": kind} for i, kind in enumerate(["job", "job", "year", "year"])]
        (world / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))

    def evaluation(choice: list[bool], control: list[bool]) -> Path:
        path = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}.json"
        tasks = {task: {"modalities": {"s2t": {"results": [{"id": f"{p}{i}", "correct": c}
                                                           for i, c in enumerate(r)]}}}
                 for task, p, r in (("fact_choice", "f", choice), ("fact_control", "c", control))}
        path.write_text(json.dumps({"tasks": tasks}))
        return path

    kinds = report.fact_kinds(evaluation([True, True, True, False], [False, False, True, False]), world)
    assert kinds == {"fact_choice_s2t_job": 1.0, "fact_choice_s2t_year": 0.5,
                     "fact_control_s2t_job": 0.0, "fact_control_s2t_year": 0.5}
    other = report.fact_kinds(evaluation([True, False, False, False], [False, False, False, False]), world)
    table = report.fact_kind_table([{"arm": "B", "seed": 0, "fact_kinds": kinds},
                                    {"arm": "B", "seed": 1, "fact_kinds": other}])
    assert "| S→T job | +0.750 ± 0.354 |" in table and "| S→T year | +0.000 ± 0.000 |" in table
    assert report.fact_kind_table([{"arm": "A", "seed": 0, "fact_kinds": {}}]) == []  # no per-item results
    assert report.fact_kinds(evaluation([True], [True]), tmp_path / "older_world") == {}  # no facts task

"""A mini work folder started from another's finished stages (``run.py --from``): a changed setting
reaches the stages that read it and those after them; the rest are hard links to the source's files,
and a stage run again in the new folder never writes into the source's."""

import json
import os

import pytest

# one file of each stage's outputs, and two no stage owns (a config, the report)
FILES = ["world/corpus.jsonl", "speech_corpus/audio/0.wav", "speech_tokenizer/whisper_vq/whisper_vq.nemo",
         "speech_tokens/train.jsonl", "text_to_token/checkpoints/latest", "text_lm/hf/config.json",
         "text_lm/eval.json", "lm_tokenizer/speech_text_tokenizer.json", "data/text.bin", "data/asr/cache/x.npy",
         "data/interleaved.bin", "synthesis/records/stats.json", "tasks/qa_spoken.jsonl",
         "speech_warmup/metrics.jsonl", "speech_warmup/eval.json", "arms/A_seed0/metrics.jsonl",
         "arms/A_seed0/eval.json", "arms/B_seed0/metrics.jsonl", "arms/B_seed0/eval.json", "configs/pretrain_A_seed0.yaml", "report.md"]
SHARED = ["world", "speech_corpus", "speech_tokenizer", "speech_tokens", "text_to_token", "text_lm"]


@pytest.fixture
def source(mini, tmp_path):
    """A finished tiny folder (with its speech warm-up) whose stages are one file each."""
    recipe = mini.Recipe("tiny", tmp_path / "source", "python")
    mini.claim_work_folder(recipe)
    for relative in FILES:
        (recipe.work / relative).parent.mkdir(parents=True, exist_ok=True)
        (recipe.work / relative).write_text(f"{relative}\n")
    (recipe.work / "stages").mkdir()
    for name, _ in recipe.stages():
        (recipe.work / "stages" / f"{name}.json").write_text(json.dumps({"figures": {"stage": name}}))
    return recipe.work


def _fork(mini, source, work, *overrides):
    recipe = mini.Recipe("tiny", work, "python", list(overrides))
    mini.claim_work_folder(recipe)
    return recipe, mini.fork.fork(recipe, source, mini.SELECTION)


def test_a_new_span_ratio_remakes_the_synthesis_and_arm_b_and_links_the_rest(mini, source, tmp_path):
    recipe, kept = _fork(mini, source, tmp_path / "ratio", "synthesis.ratio=0.5")
    assert kept == [*SHARED, "speech_text_data", "spoken_tasks", "evaluate_text_lm", "speech_warmup",
                    "evaluate_speech_warmup", "pretrain_A_seed0", "evaluate_A_seed0"]  # arm A reads no interleaved data
    work = recipe.work
    assert sorted(p.stem for p in (work / "stages").glob("*.json")) == sorted(kept)
    for relative in FILES:
        if relative.startswith(("data/interleaved", "synthesis/", "arms/B_seed0/", "configs/", "report")):
            assert not (work / relative).exists(), relative  # the stages to run again make their own
        else:
            assert os.path.samefile(work / relative, source / relative), relative
    record = json.loads((work / "forked_from.json").read_text())
    assert record == {"source": str(source), "differing": ["synthesis.ratio"], "kept": kept, "done": True}
    assert json.loads((work / "job.json").read_text())["settings"]["synthesis"]["ratio"] == 0.5
    assert mini.fork.fork(recipe, source, mini.SELECTION) == kept  # a finished fork is not redone


def test_symbolic_links_of_kept_stages_are_made_again_files_and_folders(mini, source, tmp_path):
    """A stage's symbolic links, to a file or to a folder, come over as links with the same target
    (a linked folder was left out: ``os.walk`` does not descend into it); a rerun keeps them."""
    (source / "speech_corpus" / "wav").symlink_to("audio")  # a folder link of a kept stage
    (source / "speech_tokens" / "latest.jsonl").symlink_to("train.jsonl")  # a file link of a kept stage
    (source / "synthesis" / "last").symlink_to("records")  # a folder link of a stage made again
    recipe, _ = _fork(mini, source, tmp_path / "ratio", "synthesis.ratio=0.5")
    work = recipe.work
    for relative, target in [("speech_corpus/wav", "audio"), ("speech_tokens/latest.jsonl", "train.jsonl")]:
        assert (work / relative).is_symlink() and os.readlink(work / relative) == target, relative
    assert (work / "speech_corpus/wav/0.wav").read_text() == "speech_corpus/audio/0.wav\n"
    assert not (work / "synthesis" / "last").exists() and not (work / "synthesis" / "last").is_symlink()
    mini.fork._link_files(source, work, {n: recipe.outputs(n) for n, _ in recipe.stages()}, {"speech_corpus"})
    assert os.readlink(work / "speech_corpus/wav") == "audio"


def test_a_stage_run_again_in_the_new_folder_writes_its_own_files(mini, source, tmp_path):
    recipe, _ = _fork(mini, source, tmp_path / "ratio", "synthesis.ratio=0.5")
    metrics = recipe.work / "speech_warmup" / "metrics.jsonl"
    assert mini.fork.unshare(recipe.work, recipe.outputs("speech_warmup")) == 2  # metrics.jsonl, eval.json
    assert not os.path.samefile(metrics, source / "speech_warmup" / "metrics.jsonl")
    with open(metrics, "a") as f:  # as the training loop appends
        f.write("more\n")
    assert (source / "speech_warmup" / "metrics.jsonl").read_text() == "speech_warmup/metrics.jsonl\n"
    assert mini.fork.unshare(recipe.work, recipe.outputs("speech_warmup")) == 0


@pytest.mark.parametrize("override, kept", [
    ("lm.speech_text_steps=9", [*SHARED, "speech_text_data", "synthesis", "spoken_tasks", "evaluate_text_lm",
                                "speech_warmup", "evaluate_speech_warmup"]),
    ("lm.text_lm_steps=9", ["world", "speech_corpus", "speech_tokenizer", "speech_tokens", "text_to_token",
                            "spoken_tasks"]),
    ("evaluation.held_out_voice=flite:slt", [*SHARED, "speech_text_data", "synthesis", "speech_warmup",
                                             "pretrain_A_seed0", "pretrain_B_seed0"]),
    ("speech_corpus.num_sentences=30", ["world"]),
    ("seeds=[0, 1]", [*SHARED, "speech_text_data", "synthesis", "spoken_tasks", "evaluate_text_lm", "speech_warmup",
                      "evaluate_speech_warmup", "pretrain_A_seed0", "evaluate_A_seed0", "pretrain_B_seed0",
                      "evaluate_B_seed0"]),
])
def test_a_changed_setting_reaches_the_stages_that_read_it_and_those_after(mini, source, tmp_path, override, kept):
    assert _fork(mini, source, tmp_path / "new", override)[1] == kept


def test_another_preset_keeps_nothing(mini, source, tmp_path):
    recipe = mini.Recipe("quick", tmp_path / "quick", "python")
    assert mini.fork.kept_stages(recipe, json.loads((source / "job.json").read_text())["settings"],
                                 {"world", "speech_corpus"}, mini.SELECTION) == []


def test_a_fork_is_refused_into_a_folder_with_stages_or_from_one_without_settings(mini, source, tmp_path):
    recipe, _ = _fork(mini, source, tmp_path / "ratio", "synthesis.ratio=0.5")
    other = tmp_path / "other"
    (other / "stages").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"was started from .*source.*, not .*other"):
        mini.fork.fork(recipe, other)
    with pytest.raises(SystemExit, match="no job.json"):
        mini.fork.fork(mini.Recipe("tiny", tmp_path / "third", "python"), other)
    (other / "stages" / "world.json").write_text("{}")
    with pytest.raises(SystemExit, match="holds finished stages already"):
        mini.fork.fork(mini.Recipe("tiny", other, "python"), source)


def test_every_stage_reads_real_preset_keys_and_earlier_stages(mini, tmp_path):
    recipe = mini.Recipe("full", tmp_path, "python", ["lm.speech_warmup_steps=5"])
    names = [name for name, _ in recipe.stages()]
    claimed = set()
    for index, name in enumerate(names):
        settings, upstream = recipe.reads(name)
        assert all(mini._has_key(recipe.p, key) for key in settings), name
        assert set(upstream) <= set(names[:index]), name
        claimed |= {key.split(".")[0] for key in settings}
        assert recipe.outputs(name)
    # every setting is read by some stage (the seeds and arms select stages instead)
    assert claimed == set(recipe.p) - mini.SELECTION

"""The fictional world of the paper in miniature: deterministic, facts stated in prose only, questions
in phrasings the prose never uses, valid task files."""

import json

import pytest

from megatron_speech.data.world import QUESTIONS, WorldConfig, build_world, write_world
from megatron_speech.evaluation.tasks import read_task


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(people=60, places=8, stories=30, seed=3))


def test_the_world_is_a_function_of_its_config(world):
    assert build_world(WorldConfig(people=60, places=8, stories=30, seed=3)) == world
    assert build_world(WorldConfig(people=60, places=8, stories=30, seed=4))["facts"] != world["facts"]
    with pytest.raises(ValueError, match="even number"):
        WorldConfig(people=7)


def test_every_fact_asked_is_stated_in_prose_and_no_question_asked_is_answered_in_text(world):
    prose = [doc for doc in world["corpus"] if not doc["id"].startswith("qa")]
    text = " ".join(doc["text"] for doc in prose)
    by_name = {f["name"]: f for f in world["facts"]}
    assert len(by_name) == 60
    for person, document in zip(world["facts"], world["corpus"]):  # one biography a person, in order
        biography = document["text"]
        for field in ("birthplace", "year", "job", "sibling", "pet"):
            assert str(person[field]) in biography, (person["name"], field)
        sibling = by_name[person["sibling"]]
        assert sibling["sibling"] == person["name"] and sibling["name"].split()[1] == person["name"].split()[1]
    for template, _ in QUESTIONS:  # a question's fixed words never stand in the prose
        stem = template.split("{name}")[0].strip()
        assert stem and stem not in text, stem
    for q in world["qa"] + world["qa_train"]:
        fact = by_name[q["person"]][q["fact"]]
        assert str(fact) in q["answers"]
    qa_text = " ".join(doc["text"] for doc in world["corpus"] if doc["id"].startswith("qa"))
    asked = {q["person"] for q in world["qa"]}
    shown = {q["person"] for q in world["qa_train"]}
    assert len(shown) == 30 and len(asked) == 30 and not asked & shown  # qa_in_text 0.5
    assert all(f"of {name}?" not in qa_text for name in asked)
    assert all(f"Question: {q['question']}\nAnswer: {q['answers'][0]}" in qa_text for q in world["qa_train"])


def test_the_task_files_are_valid_contract_9_files(tmp_path):
    counts = write_world(WorldConfig(people=20, places=4, stories=12), tmp_path)
    assert counts == {"facts": 20, "corpus": 34, "qa": 50, "qa_train": 50, "cloze": 12}
    kind, items = read_task(tmp_path / "qa.jsonl")
    assert kind == "qa" and len(items) == 50
    kind, stories = read_task(tmp_path / "cloze.jsonl")
    assert kind == "likelihood" and {s.answer for s in stories} == {0, 1}
    assert json.loads((tmp_path / "world.json").read_text())["counts"] == counts


def test_more_biographies_a_person_state_the_same_facts_in_other_words():
    world = build_world(WorldConfig(people=10, places=3, stories=0, biographies=3, seed=1))
    for i, person in enumerate(world["facts"]):
        bios = [d["text"] for d in world["corpus"] if d["id"].split(".")[0] == f"bio{i:05d}"]
        assert len(bios) == 3 and len(set(bios)) > 1
        for bio in bios:
            assert all(str(person[f]) in bio for f in ("birthplace", "year", "job", "sibling", "pet")), bio
    with pytest.raises(ValueError, match="biographies"):
        WorldConfig(biographies=0)

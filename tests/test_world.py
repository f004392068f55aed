"""The fictional world of the paper in miniature: deterministic, facts stated in prose only, questions
in phrasings the prose never uses, valid task files."""

import json

import pytest

from megatron_speech.data.world import FACT_STEMS, JOBS, PETS, QUESTIONS, WorldConfig, build_world, write_world
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
    assert counts == {"facts": 20, "corpus": 34, "qa": 50, "qa_train": 50, "cloze": 12, "fact_choice": 50,
                      "fact_control": 50}
    kind, items = read_task(tmp_path / "qa.jsonl")
    assert kind == "qa" and len(items) == 50
    kind, stories = read_task(tmp_path / "cloze.jsonl")
    assert kind == "likelihood" and {s.answer for s in stories} == {0, 1}
    for name in ("fact_choice", "fact_control"):
        kind, facts = read_task(tmp_path / f"{name}.jsonl")
        assert kind == "likelihood" and len(facts) == 50
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


def test_only_the_context_tells_the_right_story_ending():
    """Stories come in pairs that swap their endings: any score of the endings alone (here their
    length and their last word) gets exactly half right; the first version's endings were longer
    when right in 71 of 100 stories, and the summed log-likelihood measured that."""
    world = build_world(WorldConfig(people=20, places=4, stories=24, seed=5))
    cloze = world["cloze"]
    assert len(cloze) == 24 and {s["answer"] for s in cloze} == {0, 1}
    for score in (len, lambda ending: ending.split()[-1]):
        assert all(score(s["candidates"][0]) != score(s["candidates"][1]) for s in cloze)  # no ties
        picked = [max(range(2), key=lambda k: score(s["candidates"][k])) for s in cloze]
        assert sum(p == s["answer"] for p, s in zip(picked, cloze)) == len(cloze) // 2
    for first, second in zip(cloze[::2], cloze[1::2]):
        assert sorted(first["candidates"]) == sorted(second["candidates"])
        assert first["candidates"][first["answer"]] != second["candidates"][second["answer"]]
        assert first["context"] != second["context"]
    with pytest.raises(ValueError, match="even"):
        WorldConfig(stories=7)


def test_fact_choices_ask_the_asked_people_in_new_words_among_values_of_the_same_kind(world):
    """The likelihood form of the QA: one item a fact of each person the QA asks about, the opening in
    words the prose never uses, the right value once among others of its kind, its place random."""
    by_name = {f["name"]: f for f in world["facts"]}
    prose = " ".join(doc["text"] for doc in world["corpus"])
    places = {f["birthplace"] for f in world["facts"]}
    assert [(c["person"], c["fact"]) for c in world["fact_choice"]] == [(q["person"], q["fact"]) for q in world["qa"]]
    kinds = {"birthplace": places, "job": set(JOBS), "pet": set(PETS), "sibling": set(by_name)}
    for item in world["fact_choice"]:
        fact = str(by_name[item["person"]][item["fact"]])
        assert item["candidates"][item["answer"]] == fact and item["candidates"].count(fact) == 1
        assert len(set(item["candidates"])) == 4 and item["person"] not in item["candidates"]
        assert set(item["candidates"]) <= kinds.get(item["fact"], {str(y) for y in range(1850, 1951)})
        assert item["context"].endswith(tuple(t.split("{name}")[1] for t, _ in FACT_STEMS))
        assert item["context"] not in prose  # the whole opening, name and all, is never written
    for template, _ in FACT_STEMS:  # nor the words before the name
        assert template.split("{name}")[0].strip() not in prose, template
    assert {c["answer"] for c in world["fact_choice"]} == {0, 1, 2, 3}


def test_a_fact_control_asks_about_someone_else_whose_value_is_not_a_candidate(world):
    """The control keeps each item's candidates and answer and takes the opening of another person of
    the same kind, whose own value (and name) is not among the candidates: only priors score there."""
    by_name = {f["name"]: f for f in world["facts"]}
    openings = {(c["person"], c["fact"]): c["context"] for c in world["fact_choice"]}
    assert len(world["fact_control"]) == len(world["fact_choice"])
    for choice, control in zip(world["fact_choice"], world["fact_control"]):
        assert {k: control[k] for k in ("candidates", "answer", "fact", "person")} == \
            {k: choice[k] for k in ("candidates", "answer", "fact", "person")}
        donor = control["context_person"]
        assert donor != choice["person"] and control["context"] == openings[(donor, choice["fact"])]
        assert str(by_name[donor][choice["fact"]]) not in choice["candidates"] and donor not in choice["candidates"]
    assert len({c["context_person"] for c in world["fact_control"]}) > len(world["fact_control"]) // 10

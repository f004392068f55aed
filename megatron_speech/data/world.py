"""A small fictional world, deterministic by seed: the knowledge the paper-in-miniature measures.

The paper's claim is that interleaved data carries a text LM's knowledge into speech. To see it on
a laptop the knowledge must be known exactly, absent from every other corpus, and stated in text
only: a knowledge base of fictional people (name, birthplace, birth year, job, a sibling, a pet),
rendered as varied English prose (biographies and encyclopedic sentences about places), plus

- questions about the same facts in phrasings the prose never uses, so answering is recall of a
  fact, not completion of a memorised sentence. A small LM learns to *retrieve* a fact in answer to
  a question only if it has seen that format for some people (Allen-Zhu & Li, "Physics of Language
  Models 3.1"): the questions and answers of a share of the people (``qa_in_text``) are written as
  text documents too (and as ``qa_train.jsonl``, the few-shot examples), and the evaluation set
  (``qa.jsonl``, contract 9) asks about the others only, whose facts only the prose states;
- the same people's facts as likelihood items (``fact_choice.jsonl``): an opening in new words and
  the fact among others of its kind, a knowledge test that needs no generation, with its control
  (``fact_control.jsonl``: the same candidates after another person's opening);
- short stories with a coherent and an incoherent ending (``cloze.jsonl``, contract 9), a
  StoryCloze-like test of plain language sense, in pairs that swap their endings, so that nothing
  but the context tells the right one.

Everything is a function of ``WorldConfig`` (names and places are built from syllables by the seed).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_speech import atomic

FIRST_NAMES = ("Alma", "Boris", "Clara", "Dorian", "Edith", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Karla",
               "Lionel", "Mira", "Nestor", "Olga", "Pavel", "Rosa", "Silas", "Tilda", "Viktor", "Wanda", "Yusuf",
               "Zelda", "Anton", "Bettina", "Cyril", "Dagny", "Emil", "Frida", "Gustav")
FEMALE = {"Alma", "Clara", "Edith", "Greta", "Ines", "Karla", "Mira", "Olga", "Rosa", "Tilda", "Wanda", "Zelda",
          "Bettina", "Dagny", "Frida"}
SYLLABLES = ("bar", "ken", "lor", "mi", "dun", "sa", "vel", "tor", "ra", "quin", "bel", "gro", "ny", "fen", "os",
             "wick", "ta", "mor", "lin", "dra")
JOBS = ("baker", "carpenter", "doctor", "fisherman", "gardener", "jeweller", "librarian", "miner", "nurse",
        "painter", "pilot", "potter", "sailor", "tailor", "teacher", "weaver")
PETS = ("a cat", "a dog", "a parrot", "a goat", "a tortoise", "a rabbit", "a horse", "a hedgehog")


@dataclass(frozen=True)
class WorldConfig:
    people: int = 200
    places: int = 24
    seed: int = 0
    stories: int = 200
    first_year: int = 1850
    last_year: int = 1950
    qa_in_text: float = 0.5  # share of the people whose questions and answers are text documents too
    biographies: int = 1  # biographies a person, each drawn anew (templates and sentence order)

    def __post_init__(self) -> None:
        if self.people < 2 or self.people % 2:
            raise ValueError(f"people must be an even number of at least 2 (siblings come in pairs), got {self.people}")
        if self.places < 1 or self.stories < 0 or self.first_year > self.last_year:
            raise ValueError("need places >= 1, stories >= 0 and first_year <= last_year")
        if self.stories % 2:
            raise ValueError(f"stories must be even (they come in pairs that share their endings), got {self.stories}")
        if self.biographies < 1:
            raise ValueError(f"biographies must be at least 1, got {self.biographies}")
        if not 0 <= self.qa_in_text < 1:
            raise ValueError(f"qa_in_text must be in [0, 1) (some people must be left to ask about), got {self.qa_in_text}")


@dataclass(frozen=True)
class Person:
    name: str
    female: bool
    birthplace: str
    year: int
    job: str
    sibling: str
    pet: str

    @property
    def pronoun(self) -> str:
        return "she" if self.female else "he"

    @property
    def possessive(self) -> str:
        return "her" if self.female else "his"

    @property
    def objective(self) -> str:
        return "her" if self.female else "him"


def _place_names(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize())
    return sorted(names)


def _people(config: WorldConfig, rng: random.Random, places: list[str]) -> list[Person]:
    """Pairs of siblings (a family name each, two first names), every fact drawn by the seed."""
    surnames: set[str] = set()
    while len(surnames) < (config.people + 1) // 2:
        surnames.add("".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize() + rng.choice(("son", "er", "ov", "i", "a")))
    pairs = [[f"{first} {surname}" for first in rng.sample(FIRST_NAMES, 2)] for surname in sorted(surnames)]
    people = []
    for a, b in pairs:
        for name, sibling in ((a, b), (b, a)):
            people.append(Person(name, name.split()[0] in FEMALE, rng.choice(places),
                                 rng.randint(config.first_year, config.last_year), rng.choice(JOBS), sibling,
                                 rng.choice(PETS)))
    rng.shuffle(people)
    return people


# ---- prose: the only place facts are stated -----------------------------------------------------

BIOGRAPHY = (
    "{name} was born in {birthplace} in {year}.",
    "In {year}, {name} came into the world in the town of {birthplace}.",
    "{birthplace} is where {name} was born, in the year {year}.",
)
WORK = (
    "{Pronoun} worked as a {job} for most of {possessive} life.",
    "By trade, {name} was a {job}.",
    "People in {birthplace} knew {name} as a skilled {job}.",
)
FAMILY = (
    "{Possessive} sibling was {sibling}.",
    "{name} grew up with {sibling}, {possessive} sibling.",
)
PET = (
    "{Pronoun} kept {pet} at home.",
    "{name} owned {pet}, which followed {objective} everywhere.",
)


def _fill(template: str, p: Person) -> str:
    return template.format(name=p.name, birthplace=p.birthplace, year=p.year, job=p.job, sibling=p.sibling, pet=p.pet,
                           pronoun=p.pronoun, Pronoun=p.pronoun.capitalize(), possessive=p.possessive,
                           Possessive=p.possessive.capitalize(), objective=p.objective)


def biography(p: Person, rng: random.Random, shuffle: bool = False) -> str:
    """One sentence a fact group, each from its templates; ``shuffle`` also draws the order after the
    first sentence. Several such biographies a person are what lets a small LM retrieve a fact it
    read, rather than only recite the sentence (Allen-Zhu & Li: "knowledge augmentation")."""
    groups = [WORK, FAMILY, PET]
    if shuffle:
        rng.shuffle(groups)
    return " ".join(_fill(rng.choice(group), p) for group in [BIOGRAPHY, *groups])


def place_article(place: str, people: list[Person]) -> str:
    """An encyclopedic paragraph about a place: the people born there, by name and trade."""
    born = [p for p in people if p.birthplace == place]
    if not born:
        return f"{place} is a quiet town. No one of note was born there."
    listed = "; ".join(f"{p.name}, a {p.job}, born in {p.year}" for p in born)
    return f"{place} is a town of the region. Among the people born in {place} are {listed}."


# ---- questions: phrasings the prose never uses -------------------------------------------------

QUESTIONS = (
    ("What is the birthplace of {name}?", "birthplace"),
    ("In which year was {name} born?", "year"),
    ("What was the profession of {name}?", "job"),
    ("Which animal did {name} have as a pet?", "pet"),
    ("Who was the sibling of {name}?", "sibling"),
)


QA_TEMPLATE = "Question: {question}\nAnswer:"  # the evaluation's template (examples/mini/configs)


def questions(p: Person) -> list[dict]:
    out = []
    for template, field in QUESTIONS:
        answer = str(getattr(p, field))
        answers = [answer, answer.removeprefix("a ")] if field == "pet" else [answer]
        out.append({"question": template.format(name=p.name), "answers": answers, "fact": field, "person": p.name})
    return out


def qa_document(p: Person) -> str:
    """A person's questions answered, as text in the evaluation's template."""
    return "\n\n".join(QA_TEMPLATE.format(question=q["question"]) + " " + q["answers"][0] for q in questions(p))


# ---- facts by likelihood: the same knowledge, scored without generation ----------------------------

# Sentence openings in words the prose never uses; the fact is the continuation. Why a likelihood
# task beside the QA: exact match needs a model that both understands the question and writes the
# answer word for word, which a small model may not do from speech long after some knowledge has
# reached it; ranking a few candidates can show that knowledge earlier (chance is 1 / the number of
# candidates; the distractors are drawn from the other values of the same kind).
FACT_STEMS = (
    ("The town where {name} was born is called", "birthplace"),
    ("The year of the birth of {name} was", "year"),
    ("To earn a living, {name} worked as a", "job"),
    ("The animal that lived with {name} was", "pet"),
    ("The sibling of {name} is named", "sibling"),
)
FACT_CANDIDATES = 4  # the right value and up to three others of its kind


def fact_choices(people: list[Person], everyone: list[Person], places: list[str], config: WorldConfig,
                 rng: random.Random) -> list[dict]:
    """Likelihood items (contract 9) about ``people``: each fact's opening, and its value among others
    of the same kind (places, years, jobs, pets, other people's names) in a random order."""
    pools = {"birthplace": places, "year": [str(y) for y in range(config.first_year, config.last_year + 1)],
             "job": list(JOBS), "pet": list(PETS), "sibling": [p.name for p in everyone]}
    out = []
    for p in people:
        for template, field in FACT_STEMS:
            answer = str(getattr(p, field))
            others = [v for v in pools[field] if v not in (answer, p.name)]
            candidates = rng.sample(others, min(FACT_CANDIDATES - 1, len(others))) + [answer]
            rng.shuffle(candidates)
            out.append({"id": f"f{len(out):05d}", "context": template.format(name=p.name), "candidates": candidates,
                        "answer": candidates.index(answer), "fact": field, "person": p.name})
    return out


def fact_controls(choices: list[dict]) -> list[dict]:
    """The same items after another person's opening of the same kind, one whose value (and name) is
    not among the candidates where there is one: what the candidates' priors alone score (about chance for a
    model that reads nothing). A fact task's accuracy means knowledge only as far as it stands above
    its control's; without the control a model that favours frequent values would look informed."""
    by_kind: dict[str, list[dict]] = {}
    for item in choices:
        by_kind.setdefault(item["fact"], []).append(item)
    controls: dict[str, dict] = {}
    for kind in by_kind.values():
        for position, item in enumerate(kind):
            others = kind[position + 1:] + kind[:position] or [item]  # the next people first, round
            donor = next((o for o in others if not {o["candidates"][o["answer"]], o["person"]} & set(item["candidates"])),
                         others[0])
            controls[item["id"]] = {**item, "id": f"c{item['id'][1:]}", "context": donor["context"],
                                    "context_person": donor["person"]}
    return [controls[item["id"]] for item in choices]


# ---- StoryCloze-like stories --------------------------------------------------------------------

# Stories come in pairs whose coherent endings are each other's incoherent one: across a pair every
# ending is right once and wrong once, so a score that ignores the context (length in words or in
# speech tokens, word frequency) gets exactly half of each pair right, and only the context can lift
# it above chance. (A first version paired each story with an absurd ending of its own, and the
# coherent one was longer in 71 of 100 stories: summed log-likelihood then measured length.)
STORY_PAIRS = (
    (("{name} was very hungry after work. {Pronoun} walked into the kitchen. {Pronoun} opened the cupboard.",
      "{Pronoun} made {objective}self a sandwich."),
     ("It started to rain heavily. {name} was far from home. {Pronoun} had no umbrella.",
      "{Pronoun} got completely wet.")),
    (("{name} had an exam the next morning. {Pronoun} studied until midnight. {Pronoun} set an alarm.",
      "{Pronoun} woke up early and went to the exam."),
     ("{name} lost {possessive} keys. {Pronoun} searched the whole house. {Pronoun} looked under the sofa.",
      "{Pronoun} found the keys there.")),
    (("The kettle began to whistle. {name} took a cup from the shelf. {Pronoun} chose a tea.",
      "{Pronoun} poured the hot water into the cup."),
     ("{name} saw a small bird fall from its nest. {Pronoun} picked it up gently. {Pronoun} found a ladder.",
      "{Pronoun} put the bird back in its nest.")),
)


def stories(people: list[Person], count: int, rng: random.Random) -> list[dict]:
    """``count`` stories, two by two: story 2k and 2k+1 are the two halves of one pair (same person,
    so the endings are the same words), each ending the right one in one story and the wrong one in
    the other; the right ending's place (0 or 1) is random."""
    out = []
    for i in range(count):
        person = people[(i // 2) % len(people)]
        pair = STORY_PAIRS[(i // 2) % len(STORY_PAIRS)]
        (context, good), (_, bad) = pair[i % 2], pair[1 - i % 2]
        context, good, bad = (_fill(t, person) for t in (context, good, bad))
        answer = rng.randrange(2)
        candidates = [good, bad] if answer == 0 else [bad, good]
        out.append({"id": f"story{i:05d}", "context": context, "candidates": candidates, "answer": answer})
    return out


# ---- the world ------------------------------------------------------------------------------------


def build_world(config: WorldConfig) -> dict:
    """The world's documents, questions and stories (a dict of lists of records)."""
    rng = random.Random(config.seed)
    places = _place_names(rng, config.places)
    people = _people(config, rng, places)
    documents = [{"id": f"bio{i:05d}", "text": biography(p, rng)} for i, p in enumerate(people)]
    documents += [{"id": f"bio{i:05d}.{k}", "text": biography(p, rng, shuffle=True)}
                  for k in range(1, config.biographies) for i, p in enumerate(people)]
    documents += [{"id": f"place{i:03d}", "text": place_article(place, people)} for i, place in enumerate(places)]
    in_text = people[: int(len(people) * config.qa_in_text)]
    documents += [{"id": f"qa{i:05d}", "text": qa_document(p)} for i, p in enumerate(in_text)]
    asked = [q for p in people[len(in_text):] for q in questions(p)]
    # its own generator: the files before it stay what they were before the fact tasks existed
    choices = fact_choices(people[len(in_text):], people, places, config,
                           random.Random(f"fact_choice-{config.seed}"))
    shown = [q for p in in_text for q in questions(p)]
    return {"facts": [asdict(p) for p in people], "corpus": documents,
            "qa": [{"id": f"q{i:05d}", **q} for i, q in enumerate(asked)],
            "qa_train": [{"id": f"t{i:05d}", **q} for i, q in enumerate(shown)],
            "cloze": stories(people, config.stories, rng),
            "fact_choice": choices, "fact_control": fact_controls(choices)}


def write_world(config: WorldConfig, output_dir: str | Path) -> dict:
    """``facts.jsonl``, ``corpus.jsonl`` (text documents), ``qa.jsonl`` (the evaluation's
    questions), ``qa_train.jsonl`` (those answered in the text), ``cloze.jsonl``, ``fact_choice.jsonl``
    (the asked people's facts as likelihood items), ``fact_control.jsonl`` (the same after other
    people's openings) and ``world.json``
    (the config and counts), each written atomically; returns the counts."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    world = build_world(config)
    for name, records in world.items():
        atomic.write_text(output / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    counts = {name: len(records) for name, records in world.items()}
    atomic.write_json(output / "world.json", {"config": asdict(config), "counts": counts})
    return counts

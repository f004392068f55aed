"""Text task → spoken task: every string of every item spoken (by the corpus builder's voices, or
taken from recorded audio), tokenized by a speech tokenizer, and stored beside the text.

    items ─► utterances (item, field, index) ─► wavs ─► manifest ─► tokenize job ─► spoken task

Each stage reuses its own mechanism: ``speech.voices.speak_missing`` writes the wavs atomically
and skips finished ones; ``speech_tokenizer.tokenize`` is the resumable tokenize job and writes the
tokenizer's record (contract 2), which the spoken task file carries on. So a rerun after a kill
picks up where it stopped, and the final file is renamed into place last.

Voices: one voice speaks a whole item (a story's context and its endings, a question and its
answers), drawn per item by the seed, so the test sounds like several speakers. Choose voices no
training utterance used to test speech the model never heard.

Recorded audio: a NeMo-style manifest whose lines name the item and the field they speak
(``{"audio_filepath", "item", "field"}``, field as ``question``, ``context``, ``candidates.1``,
``answers.0``). Fields without audio get no speech; a list field must be covered whole or not at
all.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from megatron_speech import atomic
from megatron_speech.data import speech_tokens
from megatron_speech.data.corpus import CorpusError, read_records
from megatron_speech.evaluation.tasks import AUDIO_SUFFIX, FIELDS, SPEECH_SUFFIX, read_task
from megatron_speech.speech.corpus import manifest_line
from megatron_speech.speech.voices import DEFAULT_VOICES, Utterance, check_voice, speak_missing
from megatron_speech.speech_tokenizer.tokenize import TokenizeConfig, tokenize_manifest


@dataclass
class SpokenTaskConfig:
    task: str  # the text task file
    output: str  # the spoken task file
    speech_tokenizer: str  # a .nemo
    voices: list[str] = field(default_factory=lambda: list(DEFAULT_VOICES))
    audio_manifest: str | None = None  # recorded audio instead of voices
    seed: int = 0
    sample_rate: int = 16000
    workers: int = 2
    batch_size: int = 16

    def __post_init__(self) -> None:
        for voice in self.voices:
            check_voice(voice)

    @property
    def work_dir(self) -> Path:
        return Path(f"{self.output}.work")


def _utterance_key(item_id: str, name: str, index: int | None) -> str:
    return f"{item_id}|{name}" if index is None else f"{item_id}|{name}.{index}"


def _strings(kind: str, record: dict):
    """(field, index or None, text) of every string of a record."""
    one, many = FIELDS[kind]
    yield one, None, record[one]
    for i, text in enumerate(record[many]):
        yield many, i, text


def spoken_manifest(config: SpokenTaskConfig, kind: str, records: list[dict]) -> Path:
    """The manifest of every string of every item, spoken by the voices (wavs made as needed)."""
    root = config.work_dir
    utterances, keys = [], []
    for position, record in enumerate(records):
        voice = random.Random(f"{config.seed}:{record['id']}").choice(config.voices)
        for name, index, text in _strings(kind, record):
            slot = name if index is None else f"{name}{index}"
            digest = hashlib.sha256(text.encode()).hexdigest()[:10]  # an edited task never reuses a stale wav
            utterances.append(Utterance(f"i{position:06d}-{slot}-{digest}", text, voice, "task"))
            keys.append(_utterance_key(record["id"], name, index))
    speak_missing(utterances, root, config.sample_rate, config.workers)
    return _write_manifest(root, [{**manifest_line(u, root), "id": key} for u, key in zip(utterances, keys)])


def recorded_manifest(config: SpokenTaskConfig, kind: str, records: list[dict]) -> Path:
    """The user's manifest with each line's id set to its (item, field); checked against the task."""
    source = Path(config.audio_manifest)
    wanted = {_utterance_key(r["id"], n, i) for r in records for n, i, _ in _strings(kind, r)}
    lines = []
    for number, line in read_records(source):
        if not isinstance(line, dict) or not all(k in line for k in ("audio_filepath", "item", "field")):
            raise CorpusError(source, number, "a recorded-audio line needs audio_filepath, item and field")
        key = f"{line['item']}|{line['field']}"
        if key not in wanted:
            raise CorpusError(source, number, f"item {line['item']!r} has no field {line['field']!r} in {config.task}")
        audio = Path(line["audio_filepath"])
        lines.append({**line, "id": key, "audio_filepath": str(audio if audio.is_absolute() else source.parent / audio)})
    return _write_manifest(config.work_dir, lines)


def _write_manifest(root: Path, lines: list[dict]) -> Path:
    """``manifest-<content hash>.jsonl``, written once: the tokenize job keyed on it resumes after a
    kill, and a changed task or audio gets a new manifest and new tokens, never stale ones."""
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path = root / f"manifest-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, text)
    return path


def _attach(kind: str, record: dict, spoken: dict[str, tuple[list[int], str]], where: str) -> dict:
    """The record with ``<field>_speech_tokens`` and ``<field>_audio`` for each field that was spoken."""
    one, many = FIELDS[kind]
    out = dict(record)
    key = _utterance_key(record["id"], one, None)
    if key in spoken:
        out[one + SPEECH_SUFFIX], out[one + AUDIO_SUFFIX] = spoken[key]
    keys = [_utterance_key(record["id"], many, i) for i in range(len(record[many]))]
    found = [k in spoken for k in keys]
    if any(found) and not all(found):
        raise ValueError(f"{where}: item {record['id']!r}: {many} must be spoken whole or not at all "
                         f"(audio for {sum(found)} of {len(keys)})")
    if all(found):
        out[many + SPEECH_SUFFIX] = [spoken[k][0] for k in keys]
        out[many + AUDIO_SUFFIX] = [spoken[k][1] for k in keys]
    return out


def build_spoken_task(config: SpokenTaskConfig, speech_model=None, info: dict | None = None) -> dict:
    """Write the spoken task file; returns counts. ``speech_model``/``info`` may be passed in (tests)."""
    output = Path(config.output)
    kind, items = read_task(config.task)  # validates every record first, naming file and line
    records = [{**r, "id": item.id} for (_, r), item in zip(read_records(config.task), items)]
    if config.audio_manifest:
        manifest = recorded_manifest(config, kind, records)
    else:
        manifest = spoken_manifest(config, kind, records)
    tokens = manifest.with_name(manifest.name.replace("manifest-", "tokens-"))
    tokenize_manifest(TokenizeConfig(str(manifest), str(tokens), config.speech_tokenizer, config.batch_size),
                      speech_model, info)
    audio = {line["id"]: str((manifest.parent / line["audio_filepath"]).resolve())
             for _, line in read_records(manifest)}
    spoken = {r["id"]: (r[speech_tokens.SPEECH_FIELD], audio[r["id"]]) for _, r in read_records(tokens)}
    out = [_attach(kind, r, spoken, config.task) for r in records]
    speech_tokens.write_info(output, speech_tokens.read_info(tokens))
    atomic.write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return {"kind": kind, "items": len(out), "utterances": len(spoken), "output": str(output)}

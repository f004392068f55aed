"""A multi-speaker English speech corpus made on any machine, from offline text and Debian's TTS voices.

The speech tokenizer needs transcribed speech from several speakers, and tests need it without a
download. Text: WordNet's example sentences (``speech.text``). Voices: Debian's TTS engines
(``speech.voices``). This module is the plan: which voice says which sentence into which manifest.
One voice is held out: it speaks only the dev and test sentences, so word error rate can be measured
on a speaker the model never heard.

Output, in the style of NeMo manifests (one JSON line per utterance)::

    wav/<voice>/<sentence id>[-<style>].wav   16 kHz mono 16-bit
    train.jsonl, dev.jsonl, test.jsonl          training voices
    dev_heldout_voice.jsonl, test_heldout_voice.jsonl
    corpus.json                                 the configuration and counts

Everything is a function of the configuration and seed. A wav is written to a temporary name and
renamed, so a rerun reuses finished files, redoes only missing ones, and rewrites the same manifests.
"""


from __future__ import annotations

import hashlib
import json
import random
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_speech import atomic
from megatron_speech.speech.text import normalize_text, wordnet_sentences
from megatron_speech.speech.voices import DEFAULT_VOICES, Style, Utterance, VoiceVariation, check_voice, speak_missing

MANIFESTS = ("train", "dev", "test", "dev_heldout_voice", "test_heldout_voice")


@dataclass
class SpeechCorpusConfig:
    output_dir: str
    num_sentences: int = 30000
    voices: list[str] = field(default_factory=lambda: list(DEFAULT_VOICES))
    held_out_voice: str = "flite:rms"
    voices_per_sentence: int = 1  # voices per train sentence: more sentences beat more voices each
    variation: VoiceVariation | None = None  # per-utterance styles of the training voices; None: plain
    dev_sentences: int = 400   # fixed-size held-out sets: evaluation cost does not grow with the corpus
    test_sentences: int = 400
    min_words: int = 4
    max_words: int = 14
    sample_rate: int = 16000
    seed: int = 0
    workers: int = 2

    def __post_init__(self) -> None:
        if self.held_out_voice not in self.voices:
            raise ValueError(f"held_out_voice {self.held_out_voice!r} is not among voices {self.voices}")
        for voice in self.voices:
            check_voice(voice)
        if len(self.training_voices) < self.voices_per_sentence:
            raise ValueError("fewer training voices than voices_per_sentence")

    @property
    def training_voices(self) -> list[str]:
        return [v for v in self.voices if v != self.held_out_voice]


def plan(config: SpeechCorpusConfig, sentences: list[str]) -> list[Utterance]:
    """Which voice says which sentence into which manifest; deterministic in ``config.seed``."""
    rng = random.Random(config.seed)
    chosen = rng.sample(sentences, min(config.num_sentences, len(sentences)))
    n_dev, n_test = config.dev_sentences, config.test_sentences
    if n_dev + n_test >= len(chosen):
        raise ValueError(f"{len(chosen)} sentences leave none for training after {n_dev} dev + {n_test} test")
    utterances = []
    for index, text in enumerate(chosen):
        sentence_id = f"s{index:06d}"
        split = "dev" if index < n_dev else "test" if index < n_dev + n_test else "train"
        voices = rng.sample(config.training_voices, config.voices_per_sentence)
        if split == "train":
            utterances += [Utterance(sentence_id, text, v, "train", _style(config, sentence_id, v)) for v in voices]
        else:  # every held-out sentence: one training voice, and the held-out voice
            utterances.append(Utterance(sentence_id, text, voices[0], split))
            utterances.append(Utterance(sentence_id, text, config.held_out_voice, f"{split}_heldout_voice"))
    return utterances


def _style(config: SpeechCorpusConfig, sentence_id: str, voice: str) -> Style:
    if config.variation is None:
        return Style()
    return Style.draw(config.variation, f"{config.seed}:{sentence_id}:{voice}", voice)


def manifest_line(utterance: Utterance, root: Path) -> dict:
    path = utterance.wav_path(root)
    with wave.open(str(path), "rb") as w:
        duration = w.getnframes() / w.getframerate()
    return {"audio_filepath": str(path.relative_to(root)), "duration": round(duration, 4),
            "text": normalize_text(utterance.text), "raw_text": utterance.text,
            "speaker": utterance.voice, "id": f"{utterance.id}-{utterance.voice}{utterance.style.tag}"}


def build_corpus(config: SpeechCorpusConfig, sentences: list[str] | None = None) -> dict:
    """Synthesize what is missing and (re)write the manifests; returns counts per manifest."""
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    sentences = sentences if sentences is not None else wordnet_sentences(config.min_words, config.max_words)
    utterances = plan(config, sentences)
    spoken = speak_missing(utterances, root, config.sample_rate, config.workers)
    counts = {}
    for name in MANIFESTS:
        lines = [manifest_line(u, root) for u in utterances if u.manifest == name]
        atomic.write_text(root / f"{name}.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
        counts[name] = {"utterances": len(lines), "hours": round(sum(x["duration"] for x in lines) / 3600, 3)}
    fingerprint = hashlib.sha256("\n".join(f"{u.id}|{u.voice}{u.style.tag}|{u.text}" for u in utterances).encode()).hexdigest()
    summary = {"config": asdict(config), "counts": counts, "plan_sha256": fingerprint,
               "text_source": "WordNet 3.0 usage examples (WordNet licence, Princeton University)",
               "synthesized_now": spoken}
    atomic.write_json(root / "corpus.json", summary)
    return summary

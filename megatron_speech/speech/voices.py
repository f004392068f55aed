"""The voices of the synthetic corpus: Debian's offline TTS engines, and how a plan is spoken.

``espeak-ng`` (formant synthesis, several accents and variants), ``flite`` (CMU diphone/cluster
voices) and ``festival`` (diphone and HTS voices: ``festival:ked_diphone`` is ``(voice_ked_diphone)``).
A voice is ``<engine>:<name>``. Each training utterance may draw its own tempo, pitch and
vocal-tract warp (:class:`VoiceVariation`), so a few voices sound like many speakers.
"""

from __future__ import annotations

import random
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from megatron_speech.speech.audio import read_wav, resample, write_wav

DEFAULT_VOICES = (
    "flite:slt", "flite:awb", "flite:kal16", "flite:rms",
    "espeak:en-us", "espeak:en-gb", "espeak:en-us+f3", "espeak:en-gb-x-rp+m3", "espeak:en-029",
)
# The engines, and how many utterances one process of each speaks: festival's start-up (~1 s) costs
# more than a sentence, flite's and espeak-ng's almost nothing.
UTTERANCES_PER_PROCESS = {"flite": 1, "espeak": 1, "festival": 64}


def check_voice(voice: str) -> None:
    """A voice name the engines can take, or a ValueError saying what is expected."""
    engine, _, name = voice.partition(":")
    if engine not in UTTERANCES_PER_PROCESS or not name:
        raise ValueError(f"voice {voice!r}: expected <engine>:<name>, engine one of {sorted(UTTERANCES_PER_PROCESS)}")
    if engine == "festival" and not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"voice {voice!r}: a festival voice is a name like ked_diphone")


@dataclass(frozen=True)
class VoiceVariation:
    """Ranges from which each training utterance draws its own speaking style.

    Eight voices are few speakers, and a tokenizer trained on them fails on a ninth. Varying each
    utterance makes the training voices sound like many speakers. ``warp`` resamples the audio, which
    moves formants, pitch and tempo together (a shorter or longer vocal tract, as Kaldi's speed
    perturbation); ``tempo`` and ``pitch`` go to the engine (espeak-ng ``-s``/``-p``, flite
    ``duration_stretch``), so rate and pitch also vary apart from the formants. Dev and test
    utterances keep the plain voices, so the figures stay comparable. Off by default: in the mini
    recipe's budget it bought 1.3 points of WER on the held-out voice for 3.4 on the training voices.
    """

    warp: tuple[float, float] = (0.9, 1.1)
    tempo: tuple[float, float] = (0.85, 1.15)
    espeak_pitch: tuple[int, int] = (25, 75)  # espeak-ng -p, 0-99 (50 is the voice's own)


@dataclass(frozen=True)
class Style:
    """One utterance's draw from :class:`VoiceVariation`; part of the wav's name, so a changed draw
    is a new file and never a stale one."""

    warp: float = 1.0
    tempo: float = 1.0
    espeak_pitch: int = 50

    @classmethod
    def draw(cls, variation: VoiceVariation, seed: str, voice: str) -> "Style":
        rng = random.Random(seed)  # per utterance: the plan's own random sequence is untouched
        warp, tempo = round(rng.uniform(*variation.warp), 2), round(rng.uniform(*variation.tempo), 2)
        pitch = rng.randint(*variation.espeak_pitch)  # drawn for every voice: the same seed, the same style
        return cls(warp, tempo, pitch if voice.startswith("espeak:") else 50)  # only espeak-ng takes a pitch

    @property
    def tag(self) -> str:
        return "" if self == Style() else f"-w{self.warp:.2f}t{self.tempo:.2f}p{self.espeak_pitch}"


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    voice: str
    manifest: str
    style: Style = Style()

    def wav_path(self, root: Path) -> Path:
        return root / "wav" / self.voice.replace(":", "_").replace("+", "_") / f"{self.id}{self.style.tag}.wav"


def _engine_command(voice: str, text: str, wav: Path, style: Style = Style()) -> list[str]:
    engine, name = voice.split(":", 1)
    if engine == "flite":
        stretch = [] if style.tempo == 1.0 else ["--setf", f"duration_stretch={1 / style.tempo:.3f}"]
        return ["flite", "-voice", name, *stretch, "-t", text, "-o", str(wav)]
    rate = [] if style.tempo == 1.0 else ["-s", str(round(175 * style.tempo))]  # 175 words/min: the default
    pitch = [] if style.espeak_pitch == 50 else ["-p", str(style.espeak_pitch)]
    return ["espeak-ng", "-v", name, *rate, *pitch, "-w", str(wav), text]


def _festival_script(utterances: list[Utterance], wavs: list[Path]) -> str:
    """One festival process speaks a batch of one voice's utterances (Scheme, run by ``festival -b``).
    Diphone voices take their tempo as ``Duration_Stretch``; HTS voices ignore it and take ``-r``."""
    voice = utterances[0].voice.split(":", 1)[1]
    lines = [f"(voice_{voice})", "(define plain_hts_params (if (boundp 'hts_engine_params) hts_engine_params nil))"]
    for utterance, wav in zip(utterances, wavs):
        tempo = utterance.style.tempo
        text = utterance.text.replace("\\", " ").replace('"', " ")  # would end the Scheme string; unspoken
        lines += [f"(Parameter.set 'Duration_Stretch {1 / tempo:.3f})",
                  f'(set! hts_engine_params (append plain_hts_params (list (list "-r" {tempo:.3f}))))',
                  f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{wav}" \'riff)']
    return "\n".join(lines) + "\n"


def _speak(utterances: list[Utterance], raws: list[Path], tmp: Path) -> None:
    """The engine writes each utterance's raw wav; a failure names the voice and the utterance."""
    if utterances[0].voice.startswith("festival:"):
        script = tmp / "speak.scm"
        script.write_text(_festival_script(utterances, raws))
        runs = [(["festival", "-b", str(script)], utterances, raws)]
    else:
        runs = [(_engine_command(u.voice, u.text, raw, u.style), [u], [raw]) for u, raw in zip(utterances, raws)]
    for command, covered, wavs in runs:
        result = subprocess.run(command, capture_output=True, text=True)
        failed = [u for u, wav in zip(covered, wavs) if not wav.exists()]
        if result.returncode or failed:
            first = (failed or covered)[0]
            raise RuntimeError(f"{first.voice} failed on {first.id}: {(result.stderr or result.stdout).strip()[:300]}")


def synthesize(utterances: list[Utterance], root: Path, sample_rate: int) -> None:
    """Speak utterances of one voice into their wavs (a wav that exists is complete and kept)."""
    todo = [u for u in utterances if not u.wav_path(root).exists()]
    if not todo:
        return
    with tempfile.TemporaryDirectory() as tmp:
        raws = [Path(tmp) / f"raw{i}.wav" for i in range(len(todo))]
        _speak(todo, raws, Path(tmp))
        for utterance, raw in zip(todo, raws):
            samples, rate = read_wav(raw)
            if samples.size == 0:
                raise RuntimeError(f"{utterance.voice} produced no audio for {utterance.id}")
            samples = resample(samples, rate, sample_rate)
            if utterance.style.warp != 1.0:  # played `warp` times faster: formants, pitch and tempo move together
                samples = resample(samples, round(100 * utterance.style.warp), 100)
            write_wav(utterance.wav_path(root), samples, sample_rate)


def speak_missing(utterances: list[Utterance], root: Path, sample_rate: int, workers: int) -> int:
    """Speak every utterance whose wav is missing, ``workers`` engine processes at a time, with a
    progress bar; returns how many were spoken. Finished wavs are kept, so a rerun resumes."""
    todo = [u for u in utterances if not u.wav_path(root).exists()]
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), desc="synthesize", unit="utt") as bar:
        for done in pool.map(lambda batch: synthesize(batch, root, sample_rate) or len(batch), batches(todo)):
            bar.update(done)
    return len(todo)


def batches(utterances: list[Utterance]) -> list[list[Utterance]]:
    """Work items for the pool: each voice's utterances, as many as one process of its engine speaks."""
    by_voice: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_voice.setdefault(u.voice, []).append(u)
    batches = []
    for voice, group in by_voice.items():
        size = UTTERANCES_PER_PROCESS[voice.split(":", 1)[0]]
        batches += [group[i:i + size] for i in range(0, len(group), size)]
    return batches

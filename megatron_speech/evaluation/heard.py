"""Spoken answers made audible and heard: what a listener would get from a speech LM's S→S answer.

The speech tokenizer's tokens → text path (``Evaluator.transcribe``) reads codes back the way its
own quantizer wrote them, so it can credit codes that no decoder voices intelligibly. Here the
answers' codes go through the speech decoder (``speech_decoder.decode``: the job behind
``tools/decode_speech.py``) into wav files, and an ASR judge nobody here trained
(``evaluation.judges``) transcribes them. Folders are named by what made them (the answers, the
decoder file, voice and vocoder), so a rerun of the same evaluation decodes and hears nothing again
and a new model's answers never meet an old model's audio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_speech import atomic, jobs
from megatron_speech.data.corpus import read_records
from megatron_speech.evaluation.judges import JUDGES, CachedJudge
from megatron_speech.speech_decoder.decode import DecodeConfig, decode_tokens, file_key, load_decoder
from megatron_speech.speech_decoder.vocoder import GRIFFIN_LIM


@dataclass
class HeardAnswersConfig:
    speech_decoder: str  # a token-to-mel .nemo trained on the speech tokenizer's tokens
    judge: str = "whisper"  # a key of evaluation.judges.JUDGES
    voice: str | None = None  # one of the decoder's voices; default its first
    vocoder: str = GRIFFIN_LIM  # or a HiFi-GAN .nemo trained on the decoder's frames
    audio_dir: str | None = None  # default: <output>.answers/ beside the report

    def __post_init__(self) -> None:
        if self.judge not in JUDGES:
            raise ValueError(f"heard_answers.judge must be one of {sorted(JUDGES)}, got {self.judge!r}")


class AnswerListener:
    """Decodes and hears lists of spoken answers (code lists; an empty one is no answer: heard as "")."""

    def __init__(self, config: HeardAnswersConfig, audio_dir: Path) -> None:
        self.config, self.audio_dir = config, audio_dir
        self._decoder = self._judge = None

    def hear(self, answers: list[list[int]], name: str) -> list[str]:
        spoken = [(i, codes) for i, codes in enumerate(answers) if codes]
        texts = [""] * len(answers)
        if not spoken:
            return texts
        c = self.config
        key = jobs.fingerprint([spoken, file_key(c.speech_decoder), c.voice, file_key(c.vocoder)])
        folder = self.audio_dir / f"{name}-{key}"
        tokens = folder / "answers.jsonl"
        if not tokens.exists():
            atomic.write_text(tokens, "".join(json.dumps({"id": f"answer{i}", "text": "", "speech_tokens": codes}) + "\n"
                                              for i, codes in spoken))
        decoded = DecodeConfig(str(tokens), str(folder / "decoded"), c.speech_decoder, speaker=c.voice,
                               vocoder=c.vocoder)
        if not decoded.manifest.exists():
            decode_tokens(decoded, model=self.decoder())
        records = [record for _, record in read_records(decoded.manifest)]
        heard = self.judge().transcribe([folder / "decoded" / r["audio_filepath"] for r in records])
        by_id = dict(zip((r["id"] for r in records), heard))
        for i, _ in spoken:
            texts[i] = by_id[f"answer{i}"]
        return texts

    def decoder(self):
        if self._decoder is None:
            self._decoder = load_decoder(self.config.speech_decoder)
            voices = list(self._decoder.cfg.speakers)
            if self.config.voice is not None and self.config.voice not in voices:
                raise ValueError(f"heard_answers.voice {self.config.voice!r} is not a voice of "
                                 f"{self.config.speech_decoder} (it has {voices})")
        return self._decoder

    def judge(self) -> CachedJudge:
        if self._judge is None:
            self._judge = CachedJudge(JUDGES[self.config.judge](), self.audio_dir / "judge_cache.jsonl")
        return self._judge

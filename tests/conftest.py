import json
from pathlib import Path

import pytest

from megatron_speech.data.default_corpus import default_documents
from megatron_speech.tokenizer import SpeechTextTokenizer
from megatron_speech.tokenizer.train_text_tokenizer import train_bpe


@pytest.fixture(scope="session")
def text_tokenizer_file(tmp_path_factory) -> Path:
    """A small byte-level BPE trained on part of the default corpus."""
    path = tmp_path_factory.mktemp("text_tokenizer") / "tokenizer.json"
    train_bpe(default_documents()[:600], vocab_size=600, output=path)
    return path


@pytest.fixture(scope="session")
def speech_tokenizer(text_tokenizer_file) -> SpeechTextTokenizer:
    return SpeechTextTokenizer.from_text_tokenizer(text_tokenizer_file, codebook_size=64)


@pytest.fixture
def write_jsonl(tmp_path):
    def write(name: str, records: list) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    return write

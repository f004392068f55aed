import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from megatron_speech.data.default_corpus import default_documents
from megatron_speech.data.preprocess import PreprocessConfig, preprocess
from megatron_speech.testing.multiprocess import run_processes
from megatron_speech.testing.tiny import tiny_train_config, train_in_process, tts_records
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.lm_tokenizer.train_bpe import train_bpe


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


@pytest.fixture
def evaluation_agrees_with_the_tokens(tmp_path):
    """Checks a speech tokenizer's ``evaluate_manifest`` (on four clips of two voices, in a batch of
    three and one of one) against its tokens: the manifest's transcripts are the tokens' own, so the
    evaluation's WER is 0 exactly when it transcribes the same tokens; the audio path agrees."""
    from megatron_speech.speech.audio import load_audio, pad_batch, write_wav
    from megatron_speech.speech_tokenizer.evaluate import evaluate_manifest
    import torch
    from nemo.collections.asr.metrics.wer import word_error_rate

    def check(model) -> dict:
        g = np.random.default_rng(8)
        lines = []
        for i, seconds in enumerate([1.0, 2.3, 0.6, 1.7]):
            write_wav(tmp_path / f"{i}.wav", (3000 * g.standard_normal(int(16000 * seconds))).astype(np.int16), 16000)
            lines.append({"audio_filepath": f"{i}.wav", "speaker": "ab"[i % 2]})
        manifest = tmp_path / "m.jsonl"
        audio, lengths = pad_batch([load_audio(manifest, n, line, 16000) for n, line in enumerate(lines, 1)])
        tokens = model.tokenize(audio, lengths)
        texts = model.transcribe_tokens(tokens)
        assert all(t.strip() for t in texts), texts  # random weights say something: the check can fail
        assert texts == model.transcribe_audio(audio, lengths)
        manifest.write_text("".join(json.dumps({**line, "text": t}) + "\n" for line, t in zip(lines, texts)))
        result = evaluate_manifest(model, manifest, batch_size=3)
        assert result["wer"] == 0.0, result["examples"]
        assert result["codebook_usage"] == pytest.approx(len({c for t in tokens for c in t}) / model.quantizer.num_codes)
        assert sorted(result["by_speaker"]) == ["a", "b"]
        # the quantizer bypassed: the codes' own vectors read as vectors are the tokens' path, and the
        # evaluation's bypassed WER is that of the frames before the quantizer, per voice too
        assert model.transcribe_vectors([model.quantizer.codebook[torch.tensor(t)] for t in tokens]) == texts
        bypassed = model.transcribe_vectors(model.continuous_vectors(audio, lengths))
        both = evaluate_manifest(model, manifest, batch_size=3, unquantized=True)
        assert both["wer"] == 0.0 and "wer_unquantized" not in result
        assert both["wer_unquantized"] == pytest.approx(word_error_rate(bypassed, texts))
        assert both["by_speaker"]["a"]["wer_unquantized"] == pytest.approx(word_error_rate(bypassed[::2], texts[::2]))
        return result

    return check


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, text_tokenizer_file):
    """A tokenizer and 800 documents of the default corpus as indexed binaries."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = SpeechTextTokenizer.from_text_tokenizer(text_tokenizer_file, codebook_size=64)
    tokenizer.save(root / "tokenizer")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in default_documents()[:800]))
    preprocess(PreprocessConfig([str(corpus)], str(root / "data" / "text"), str(root / "tokenizer")))
    return root, tokenizer


@pytest.fixture(scope="session")
def blend(prepared):
    """``prepared`` plus TTS and interleaved sets with random speech codes: a three-source mixture."""
    root, tokenizer = prepared
    rng = np.random.default_rng(0)
    docs = default_documents()[800:1400]
    codes = lambda n: rng.integers(0, tokenizer.codebook_size, n).tolist()  # noqa: E731
    sets = {
        "tts": [{"text": d[:60], "speech_tokens": codes(40)} for d in docs],
        "interleaved": [{"segments": [{"text": d[:80]}, {"audio": codes(30)}, {"text": d[80:200]}]} for d in docs],
    }
    for layout, records in sets.items():
        path = root / f"{layout}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        preprocess(PreprocessConfig([str(path)], str(root / "data" / layout), str(root / "tokenizer"), layout=layout))
    return root, tokenizer, [
        {"prefix": str(root / "data" / "text"), "weight": 0.5, "layout": "text"},
        {"prefix": str(root / "data" / "tts"), "weight": 0.2, "layout": "tts", "loss": "audio"},
        {"prefix": str(root / "data" / "interleaved"), "weight": 0.3, "layout": "interleaved"},
    ]


# ---- a tiny text-to-token model, trained through the pre-training entry point -----------------


@pytest.fixture(scope="session")
def t2t(prepared, tmp_path_factory):
    """A tiny text-to-token checkpoint: (work dir with ckpt/, tokenizer dir, tokenizer)."""
    root, tokenizer = prepared
    work = tmp_path_factory.mktemp("t2t")
    records = tts_records(tokenizer.codebook_size, 300)
    (work / "tts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    preprocess(PreprocessConfig([str(work / "tts.jsonl")], str(work / "tts"), str(root / "tokenizer"), layout="tts"))
    values = tiny_train_config(root, steps=150, global_batch_size=16, micro_batch_size=8)
    values["data"] = {"sources": [{"prefix": str(work / "tts"), "layout": "tts", "loss": "audio"}], "seq_length": 64}
    values["model"]["max_sequence_length"] = 128
    values["checkpoint"] = {"dir": str(work / "ckpt")}
    run_processes(train_in_process, 1, values)
    return work, root / "tokenizer", tokenizer


@pytest.fixture(scope="session")
def mini():
    """``examples/mini/run.py`` as a module (the recipe's stages, settings and fork; ``mini.report``)."""
    run = Path(__file__).resolve().parents[1] / "examples" / "mini" / "run.py"
    spec = importlib.util.spec_from_file_location("mini_run", run)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

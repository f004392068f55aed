"""Preprocessing into indexed binaries: the C++ builder, every layout, resume, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_speech import _C
from megatron_speech.data import indexed
from megatron_speech.data.corpus import CorpusError
from megatron_speech.data.preprocess import PreprocessConfig, preprocess
from megatron_speech.jobs import CRASH_AFTER_DOCS_ENV
from megatron_speech.lm_tokenizer import AudioSegment, SpeechTextTokenizer, TextSegment

ROOT = Path(__file__).resolve().parents[1]


def _megatron_build(prefix: Path, docs: list[np.ndarray], dtype) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in docs:
        builder.add_document(torch.from_numpy(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def _cpp_build(prefix: Path, docs: list[np.ndarray], dtype_code: int, vocab: int) -> None:
    builder = _C.IndexedBuilder(f"{prefix}.bin", dtype_code, vocab)
    lengths = np.array([len(d) for d in docs])
    builder.add_segments(np.concatenate(docs).astype(np.int32), np.zeros(0, np.int32), np.zeros(len(docs), np.uint8),
                         lengths, np.ones(len(docs), np.int64), 0, 1, 0, 0, -1)
    builder.finalize(f"{prefix}.idx")


@pytest.mark.parametrize("dtype, code, vocab", [(np.uint16, 8, 65536), (np.int32, 4, 200_000)])
def test_cpp_builder_matches_megatron_builder_bytes(tmp_path, dtype, code, vocab):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, vocab, size=rng.integers(1, 400)).astype(np.int64) for _ in range(300)]
    docs.append(np.array([vocab - 1, 0]))
    _megatron_build(tmp_path / "ref", docs, dtype)
    _cpp_build(tmp_path / "cpp", docs, code, vocab)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"cpp{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes(), suffix
    dataset = IndexedDataset(str(tmp_path / "cpp"))
    assert len(dataset) == len(docs) and dataset.index.dtype == dtype
    for i in (0, 150, len(docs) - 1):
        assert np.array_equal(dataset[i], docs[i])


def test_cpp_builder_rejects_ids_outside_the_vocabulary(tmp_path):
    with pytest.raises(IndexError, match=r"token id 70 outside \[0, 70\) in document 0"):
        _cpp_build(tmp_path / "x", [np.array([1, 70])], 8, 70)
    with pytest.raises(ValueError, match="does not fit uint16"):
        _C.IndexedBuilder(str(tmp_path / "y.bin"), 8, 70_000)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, text_tokenizer_file):
    """A small-vocabulary (uint16) and a large-vocabulary (int32) speech tokenizer, saved."""
    out = {}
    for name, codes in (("small", 64), ("large", 70_000)):
        directory = tmp_path_factory.mktemp(name)
        SpeechTextTokenizer.from_text_tokenizer(text_tokenizer_file, codes).save(directory)
        out[name] = directory
    return out


def _records(layout: str, n: int = 40, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    codes = lambda: rng.integers(0, 64, size=rng.integers(1, 30)).tolist()  # noqa: E731
    words = "the speech token model reads text and audio in one stream".split()
    text = lambda: " ".join(rng.choice(words, size=rng.integers(1, 12)))  # noqa: E731
    out = []
    for i in range(n):
        if layout == "text":
            out.append({"id": i, "text": text()})
        elif layout in ("speech", "asr", "tts"):
            out.append({"id": i, "text": text(), "speech_tokens": codes()})
        else:
            segs = [{"text": text()} if j % 2 == 0 else {"audio": codes()} for j in range(rng.integers(1, 7))]
            if i % 5 == 0:
                segs.insert(0, {"audio": codes()})  # audio first
            out.append({"id": i, "segments": segs})
    return out


def _expected_segments(layout: str, record: dict):
    audio = AudioSegment(tuple(record.get("speech_tokens", ())))
    return {
        "text": lambda: [TextSegment(record["text"])],
        "speech": lambda: [audio],
        "asr": lambda: [audio, TextSegment(record["text"])],
        "tts": lambda: [TextSegment(record["text"]), audio],
        "interleaved": lambda: [TextSegment(s["text"]) if "text" in s else AudioSegment(tuple(s["audio"]))
                                for s in record["segments"]],
    }[layout]()


def _run(inputs, prefix, tokenizer_dir, **kwargs) -> dict:
    return preprocess(PreprocessConfig([str(p) for p in inputs], str(prefix), str(tokenizer_dir), **kwargs))


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("layout", ["text", "speech", "asr", "tts", "interleaved"])
def test_layouts_decode_back_and_match_the_reference(tmp_path, write_jsonl, tokenizers, layout, size):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_speech.lm_tokenizer import normalize_segments

    records = _records(layout)
    corpus = write_jsonl("in.jsonl", records)
    _run([corpus], tmp_path / "cpp", tokenizers[size], layout=layout, batch_documents=7)
    _run([corpus], tmp_path / "ref", tokenizers[size], layout=layout, backend="python")
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"cpp{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes()
    tokenizer = SpeechTextTokenizer.load(tokenizers[size])
    dataset = IndexedDataset(str(tmp_path / "cpp"))
    assert dataset.index.dtype == (np.uint16 if size == "small" else np.int32)
    assert len(dataset) == len(records)
    for record, ids in zip(records, (dataset[i] for i in range(len(dataset)))):
        assert ids[-1] == tokenizer.eod
        assert tokenizer.decode(ids[:-1]) == normalize_segments(_expected_segments(layout, record))
    meta = indexed.read_metadata(tmp_path / "cpp")
    assert meta["layout"] == layout and meta["tokenizer_fingerprint"] == tokenizer.fingerprint()


@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_tts_with_a_voice_field_names_the_voice_before_the_text(tmp_path, write_jsonl, tokenizers, backend):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_speech.lm_tokenizer import normalize_segments

    records = [{**r, "speaker": ["flite:slt", "espeak:en-gb"][i % 2]} for i, r in enumerate(_records("tts", n=6))]
    _run([write_jsonl("voices.jsonl", records)], tmp_path / "v", tokenizers["small"], layout="tts",
         voice_field="speaker", backend=backend)
    tokenizer = SpeechTextTokenizer.load(tokenizers["small"])
    dataset = IndexedDataset(str(tmp_path / "v"))
    for record, ids in zip(records, (dataset[i] for i in range(len(dataset)))):
        expected = [TextSegment(f"[{record['speaker']}] {record['text']}"), AudioSegment(tuple(record["speech_tokens"]))]
        assert tokenizer.decode(ids[:-1]) == normalize_segments(expected)
    assert indexed.read_metadata(tmp_path / "v")["voice_field"] == "speaker"
    # a record without its voice is named by file and line; a voice field means nothing outside tts
    bad = write_jsonl("novoice.jsonl", [records[0], {k: v for k, v in records[1].items() if k != "speaker"}])
    with pytest.raises(CorpusError, match=r"novoice.jsonl:2: missing field 'speaker'"):
        _run([bad], tmp_path / "bad", tokenizers["small"], layout="tts", voice_field="speaker", backend=backend)
    with pytest.raises(ValueError, match="tts layout only"):
        PreprocessConfig([str(bad)], str(tmp_path / "asr"), str(tokenizers["small"]), layout="asr", voice_field="speaker")


def test_gpt_dataset_reads_the_output(tmp_path, write_jsonl, tokenizers):
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split

    corpus = write_jsonl("in.jsonl", _records("interleaved", n=200))
    _run([corpus], tmp_path / "out", tokenizers["small"], layout="interleaved")
    tokenizer = SpeechTextTokenizer.load(tokenizers["small"])
    config = GPTDatasetConfig(random_seed=1, sequence_length=32, tokenizer=tokenizer, reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)
    indexed_ds = IndexedDataset(str(tmp_path / "out"))
    dataset = GPTDataset(indexed_ds, str(tmp_path / "out"), np.arange(len(indexed_ds)), 10, Split.train, config)
    sample = dataset[3]
    assert sample["tokens"].shape == (32,) and int(sample["tokens"].max()) < tokenizer.vocab_size


def test_output_independent_of_workers_and_chunking(tmp_path, write_jsonl, tokenizers):
    corpus = write_jsonl("in.jsonl", _records("interleaved", n=300))
    _run([corpus], tmp_path / "one", tokenizers["small"], layout="interleaved")
    stats = _run([corpus], tmp_path / "two", tokenizers["small"], layout="interleaved", workers=2, chunk_bytes=4096)
    assert stats["documents"] == 300
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()


def _tool(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "preprocess_data.py"), *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_killed_worker_then_rerun_is_byte_identical(tmp_path, write_jsonl, tokenizers):
    corpus = write_jsonl("in.jsonl", _records("tts", n=600))
    common = [str(corpus), "--tokenizer", str(tokenizers["small"]), "--layout", "tts", "--workers", "2"]
    clean = _tool([*common, "--output-prefix", str(tmp_path / "clean")])
    assert clean.returncode == 0, clean.stderr
    chunked = [*common, "--output-prefix", str(tmp_path / "resumed"), "--chunk-mb", "0.002"]  # ~20 records a chunk
    crashed = _tool(chunked, env={CRASH_AFTER_DOCS_ENV: "5"})
    assert crashed.returncode != 0 and "rerun the same command to resume" in crashed.stderr
    assert not (tmp_path / "resumed.bin").exists() and not indexed.metadata_path(tmp_path / "resumed").exists()
    assert list((tmp_path / "resumed.shards").rglob("*.tmp")), "the crash should leave a partial shard"
    rerun = _tool(chunked)
    assert rerun.returncode == 0, rerun.stderr
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"resumed{suffix}").read_bytes() == (tmp_path / f"clean{suffix}").read_bytes()
    assert not (tmp_path / "resumed.shards").exists()
    mtime = (tmp_path / "resumed.bin").stat().st_mtime_ns
    assert _tool(chunked).returncode == 0
    assert (tmp_path / "resumed.bin").stat().st_mtime_ns == mtime  # a finished job's rerun does nothing


def test_kill_9_leaves_no_worker_and_an_immediate_rerun_is_byte_identical(tmp_path, write_jsonl, tokenizers):
    import signal
    import time

    import psutil

    from megatron_speech.testing.multiprocess import alive

    corpus = write_jsonl("in.jsonl", _records("tts", n=2000))
    common = [str(corpus), "--tokenizer", str(tokenizers["small"]), "--layout", "tts", "--workers", "2",
              "--chunk-mb", "0.002"]
    assert _tool([*common, "--output-prefix", str(tmp_path / "clean")]).returncode == 0
    job = subprocess.Popen([sys.executable, str(ROOT / "tools" / "preprocess_data.py"), *common, "--output-prefix",
                            str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.shards" / "parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*.stats.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(job.pid).children(recursive=True)
    assert len(workers) >= 2 and job.poll() is None, "the job should be mid-run with its workers"
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    deadline = time.monotonic() + 10
    while any(alive(w.pid) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w.pid for w in workers if alive(w.pid)], "workers outlived the killed job"
    rerun = _tool([*common, "--output-prefix", str(tmp_path / "killed")])  # at once: nothing left to collide with
    assert rerun.returncode == 0, rerun.stderr
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"killed{suffix}").read_bytes() == (tmp_path / f"clean{suffix}").read_bytes()


BAD = [
    (b'{"text": "broken', "text", "malformed JSON"),
    (b'{"body": "x"}', "text", "missing field 'text'"),
    (b'{"text": "caf\xe9"}', "text", "invalid UTF-8"),
    (b'{"text": ""}', "text", "empty document"),
    (b'{"text": "hi", "speech_tokens": [1, 64]}', "tts", "audio id 64 .* outside the speech vocabulary"),
    (b'{"speech_tokens": []}', "speech", "empty document"),
    (b'{"segments": [{"audio": [-1]}]}', "interleaved", "audio id -1"),
    # valid JSON that no tokenizer can encode, and an empty audio segment (issue 22)
    (b'{"text": "lone \\ud800 surrogate"}', "text", r"field 'text' is not valid Unicode \(lone surrogate"),
    (b'{"segments": [{"text": "x \\udfff"}]}', "interleaved", r"segments\[0\]\.text is not valid Unicode"),
    (b'{"segments": [{"text": "a"}, {"audio": []}]}', "interleaved", r"segments\[1\]\.audio is empty"),
]


@pytest.mark.parametrize("line, layout, reason", BAD, ids=[b[2].split(" ")[0] + "-" + b[1] for b in BAD])
def test_bad_record_stops_with_file_and_line(tmp_path, tokenizers, line, layout, reason):
    good = json.dumps(_records(layout, n=1)[0]).encode()
    corpus = tmp_path / "bad.jsonl"
    corpus.write_bytes(good + b"\n" + good + b"\n" + line + b"\n" + good + b"\n")
    with pytest.raises(CorpusError, match=rf"bad\.jsonl:3: {reason}"):
        _run([corpus], tmp_path / "out", tokenizers["small"], layout=layout)
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "out.idx").exists()


@pytest.mark.parametrize("line, layout, reason", BAD, ids=[b[2].split(" ")[0] + "-" + b[1] for b in BAD])
def test_bad_record_skipped_and_reported(tmp_path, tokenizers, line, layout, reason):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    good = json.dumps(_records(layout, n=1)[0]).encode()
    corpus = tmp_path / "bad.jsonl"
    corpus.write_bytes(good + b"\n" + line + b"\n" + good + b"\n")
    stats = _run([corpus], tmp_path / "out", tokenizers["small"], layout=layout, on_error="skip")
    assert stats["documents"] == 2 and stats["skipped"] == 1
    assert len(IndexedDataset(str(tmp_path / "out"))) == 2
    (report,) = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert report["record"] == 2 and report["file"].endswith("bad.jsonl")
    assert __import__("re").search(reason, report["reason"])


# ---- hostile but common input (issue 22) ------------------------------------------------------


def test_a_utf8_bom_does_not_reject_the_first_record(tmp_path, tokenizers):
    corpus = tmp_path / "bom.jsonl"
    corpus.write_bytes(b"\xef\xbb\xbf" + b'{"text": "first"}\n{"text": "second"}\n')
    assert _run([corpus], tmp_path / "out", tokenizers["small"])["documents"] == 2


def test_a_truncated_gzip_is_named_and_its_readable_records_kept(tmp_path, tokenizers):
    import gzip

    whole = gzip.compress("".join(json.dumps({"text": f"record number {i} " * 20}) + "\n" for i in range(200)).encode())
    corpus = tmp_path / "cut.jsonl.gz"
    corpus.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorpusError, match=r"cut\.jsonl\.gz:\d+: truncated or corrupt gzip data"):
        _run([corpus], tmp_path / "stop", tokenizers["small"])
    stats = _run([corpus], tmp_path / "skip", tokenizers["small"], on_error="skip")
    (report,) = [json.loads(x) for x in (tmp_path / "skip.errors.jsonl").read_text().splitlines()]
    assert 0 < stats["documents"] < 200 and report["record"] == stats["documents"] + 1
    assert report["file"] == str(corpus) and "truncated" in report["reason"]


@pytest.mark.parametrize("content", [b"", b'{"text": ""}\n{"body": 1}\n'], ids=["empty-file", "all-skipped"])
def test_no_documents_is_an_error_not_an_unreadable_dataset(tmp_path, tokenizers, content):
    from megatron_speech.data.corpus import EmptyCorpusError

    corpus = tmp_path / "none.jsonl"
    corpus.write_bytes(content)
    with pytest.raises(EmptyCorpusError, match=r"none\.jsonl: no documents to write"):
        _run([corpus], tmp_path / "out", tokenizers["small"], on_error="skip")
    assert not (tmp_path / "out.bin").exists() and not indexed.metadata_path(tmp_path / "out").exists()
    result = _tool([str(corpus), "--tokenizer", str(tokenizers["small"]), "--output-prefix", str(tmp_path / "t"),
                    "--on-error", "skip"])
    assert result.returncode == 1 and "no documents to write" in result.stderr and "Traceback" not in result.stderr


def test_special_token_strings_in_data_stay_text(tmp_path, tokenizers):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tokenizer = SpeechTextTokenizer.load(tokenizers["small"])
    text = "a story that quotes <|endoftext|> and <|begin_of_audio|> in the middle"
    corpus = tmp_path / "quoted.jsonl"
    corpus.write_text(json.dumps({"text": text}) + "\n")
    for backend in ("cpp", "python"):
        _run([corpus], tmp_path / backend, tokenizers["small"], backend=backend)
        dataset = IndexedDataset(str(tmp_path / backend))  # kept: [0] is a view into its memory map
        ids = dataset[0].tolist()
        assert ids.count(tokenizer.eod) == 1 and ids[-1] == tokenizer.eod  # only the document's own end
        assert tokenizer.boa not in ids and tokenizer.detokenize(ids[:-1]) == text

"""The ASR judges and their transcript cache (megatron_speech/evaluation/judges.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from megatron_speech.evaluation.judges import CachedJudge, PocketsphinxJudge, WhisperJudge


class CountingJudge:
    """Hears a file as its bytes' length; counts the files it was asked to hear."""

    name = "counting"

    def __init__(self, identity: str = "counting 1") -> None:
        self.identity, self.heard = identity, []

    def transcribe(self, paths: list[Path]) -> list[str]:
        self.heard += [Path(p).name for p in paths]
        return [f"{Path(p).stat().st_size} bytes" for p in paths]


def _files(tmp_path: Path, contents: dict[str, bytes]) -> list[Path]:
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in contents]


def test_the_cache_hears_only_audio_it_has_not_heard_and_keeps_the_order(tmp_path):
    a, b, c = _files(tmp_path, {"a.wav": b"aa", "b.wav": b"bbb", "c.wav": b"c"})
    cache = tmp_path / "cache.jsonl"
    first = CountingJudge()
    assert CachedJudge(first, cache).transcribe([a, b]) == ["2 bytes", "3 bytes"]
    second = CountingJudge()
    assert CachedJudge(second, cache).transcribe([c, b, a]) == ["1 bytes", "3 bytes", "2 bytes"]
    assert first.heard == ["a.wav", "b.wav"] and second.heard == ["c.wav"]
    assert len(cache.read_text().splitlines()) == 3


def test_changed_audio_or_another_judge_is_heard_again_and_the_same_audio_once(tmp_path):
    (a,) = _files(tmp_path, {"a.wav": b"aa"})
    cache = tmp_path / "cache.jsonl"
    CachedJudge(CountingJudge(), cache).transcribe([a])
    a.write_bytes(b"aaaa")  # a new decoder's audio under the old name
    judge = CountingJudge()
    assert CachedJudge(judge, cache).transcribe([a]) == ["4 bytes"] and judge.heard == ["a.wav"]
    other = CountingJudge("counting 2")  # another model of the same judge
    CachedJudge(other, cache).transcribe([a])
    assert other.heard == ["a.wav"]
    (copy,) = _files(tmp_path, {"copy.wav": b"bbbbb"})
    (twin,) = _files(tmp_path, {"twin.wav": b"bbbbb"})
    judge = CountingJudge()
    assert CachedJudge(judge, cache).transcribe([copy, twin]) == ["5 bytes", "5 bytes"] and judge.heard == ["copy.wav"]


def test_two_caches_on_one_file_keep_both_their_transcripts(tmp_path):
    a, b = _files(tmp_path, {"a.wav": b"a", "b.wav": b"bb"})
    cache = tmp_path / "cache.jsonl"
    one, two = CachedJudge(CountingJudge(), cache), CachedJudge(CountingJudge(), cache)  # both read it empty
    one.transcribe([a])
    two.transcribe([b])
    judge = CountingJudge()
    CachedJudge(judge, cache).transcribe([a, b])
    assert judge.heard == []


def test_a_broken_cache_is_named_by_line(tmp_path):
    cache = tmp_path / "cache.jsonl"
    good = json.dumps({"judge": "counting 1", "audio_sha256": "00", "text": "x"}) + "\n"
    cache.write_text(good + "{not json\n")
    with pytest.raises(ValueError, match=r"cache\.jsonl:2: .*JSON"):
        CachedJudge(CountingJudge(), cache)
    cache.write_text(good + json.dumps({"judge": "counting 1", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"cache\.jsonl:2: not a judge-cache record"):
        CachedJudge(CountingJudge(), cache)


@pytest.fixture(scope="module")
def flite_utterance(tmp_path_factory) -> Path:
    wav = tmp_path_factory.mktemp("judges") / "slt.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", "the quick brown fox jumps over the lazy dog", "-o", str(wav)],
                   check=True, capture_output=True)
    return wav


@pytest.mark.parametrize("make", [WhisperJudge, PocketsphinxJudge], ids=["whisper", "pocketsphinx"])
def test_a_real_judge_hears_flite_and_its_cached_transcript_is_the_same(make, flite_utterance, tmp_path):
    judge = make()
    (heard,) = judge.transcribe([flite_utterance])
    assert {"quick", "fox", "lazy", "dog"} & set(heard.split()), heard
    cached = CachedJudge(judge, tmp_path / "cache.jsonl")
    assert cached.transcribe([flite_utterance]) == [heard]
    judge.transcribe = None  # a second call must not reach the judge
    assert CachedJudge(judge, tmp_path / "cache.jsonl").transcribe([flite_utterance]) == [heard]

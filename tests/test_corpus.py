import gzip
import json

import pytest

from megatron_speech.data.corpus import CorpusError, read_text_records


def test_reads_jsonl_gz_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    gz = tmp_path / "a.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"body": "first doc"}) + "\n\n" + json.dumps({"body": "second"}) + "\n")
    assert [(r.record, r.text) for r in read_text_records(gz, field="body")] == [(1, "first doc"), (3, "second")]
    pq.write_table(pa.table({"text": ["x y", "z"]}), tmp_path / "b.parquet")
    assert [r.text for r in read_text_records(tmp_path / "b.parquet")] == ["x y", "z"]


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"text": "unterminated', "malformed JSON"),
        (b'{"body": "no text field"}', "missing field 'text'"),
        (b'{"text": "caf\xe9"}', "invalid UTF-8"),
        (b'{"text": "   "}', "empty document"),
        (b'{"text": 7}', "not a string"),
        (b'[1, 2]', "missing field 'text'"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "fine"}\n' + line + b"\n")
    with pytest.raises(CorpusError, match=rf"bad\.jsonl:2: .*{reason}") as info:
        list(read_text_records(path))
    assert info.value.record == 2


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_text_records(tmp_path / "nope.jsonl")
    (tmp_path / "c.csv").write_text("a")
    with pytest.raises(ValueError, match="unknown corpus format"):
        read_text_records(tmp_path / "c.csv")

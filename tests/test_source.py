"""Reading call lists: every format, compressed or not, damaged lines kept as invalid records."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from harvester.errors import InputError
from harvester.source import MAX_LINE, CallList, InvalidRecord, Record


def read(path: Path) -> list[str | InvalidRecord]:
    """The ids read, in order, and the invalid records where they stand."""
    with CallList(str(path)) as calls:
        return [r if isinstance(r, InvalidRecord) else r[1] for r in calls]


def read_lines(path: Path) -> list[Record]:
    with CallList(str(path)) as calls:
        return list(calls)


def test_text_with_bom_crlf_comments_blanks_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt"
    path.write_bytes(
        b"\xef\xbb\xbfc-first\r\n# a comment\r\n\r\n   c-second  \r\n"
        b"\tc-third\n  # indented\nc-last"
    )
    assert read_lines(path) == [(1, "c-first"), (4, "c-second"), (5, "c-third"), (7, "c-last")]


def test_csv_with_a_callid_column(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text('startTime,callId,to\r\n2026-11-25,c-one,+1\r\n2026-11-25,"c-two",+2\r\n\r\n')
    assert read(path) == ["c-one", "c-two"]


def test_csv_with_an_id_column_and_an_empty_cell(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text("id,state\nc-one,completed\n,completed\nc-three\n")
    assert read(path) == ["c-one", InvalidRecord(3, "empty call id cell"), "c-three"]


def test_csv_without_an_id_column_fails_before_anything_else(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text("call,state\nc-one,completed\n")
    with pytest.raises(InputError, match="no callId or id column"):
        CallList(str(path))


@pytest.mark.parametrize("suffix", [".ndjson", ".jsonl"])
def test_ndjson_objects_with_callid_or_id(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"calls{suffix}"
    path.write_text(
        '{"callId": "c-one", "x": 1}\n\n{"id": "c-two"}\nnot json\n[1]\n{"other": "c-x"}\n'
    )
    assert read(path) == [
        "c-one",
        "c-two",
        InvalidRecord(4, "not a JSON object"),
        InvalidRecord(5, "not a JSON object"),
        InvalidRecord(6, "no callId or id field"),
    ]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("calls.txt.gz", b"c-one\nc-two\n"),
        ("calls.csv.gz", b"callId\nc-one\nc-two\n"),
        ("calls.ndjson.gz", b'{"callId":"c-one"}\n{"id":"c-two"}\n'),
        ("calls.list", b"c-one\nc-two\n"),  # gzip found by its magic bytes, whatever the name
    ],
)
def test_gzip_compressed_inputs(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(content))
    assert read(path) == ["c-one", "c-two"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"callId":"c-one"}\n', ["c-one"]),
        (b"# export\ncallId,state\nc-one,done\n", ["c-one"]),
        (b"c-one\nc-two\n", ["c-one", "c-two"]),
    ],
)
def test_format_is_sniffed_when_the_name_says_nothing(
    tmp_path: Path, content: bytes, expected: list[str]
) -> None:
    path = tmp_path / "calls"
    path.write_bytes(content)
    assert read(path) == expected


def test_an_overlong_line_is_one_invalid_record_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt"
    path.write_bytes(b"c-one\n" + b"x" * (3 * MAX_LINE) + b"\nc-two\n")
    assert read(path) == ["c-one", InvalidRecord(2, f"line longer than {MAX_LINE} bytes"), "c-two"]


def test_invalid_utf8_is_kept_visible_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt"
    path.write_bytes(b"c-\xff\xfe\nc-two\n")
    assert read(path) == ["c-\ufffd\ufffd", "c-two"]


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"input file .*nope\.txt does not exist"):
        CallList(str(tmp_path / "nope.txt"))


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        CallList(str(tmp_path))


def test_a_truncated_gzip_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt.gz"
    content = "".join(f"c-{i * 7919 % 100_003}\n" for i in range(50_000)).encode()
    path.write_bytes(gzip.compress(content)[:5000])
    with pytest.raises(InputError, match="damaged after line"), CallList(str(path)) as calls:
        list(calls)


def test_a_big_file_is_read_as_a_stream(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt"
    with path.open("w") as f:
        for i in range(200_000):
            f.write(f"c-{i:020d}\n")
    with CallList(str(path)) as calls:
        records = iter(calls)
        assert next(records) == (1, "c-00000000000000000000")
        # Only a read buffer has been consumed, not the file.
        assert calls._raw.tell() < 1024 * 1024
        assert sum(1 for _ in records) == 199_999

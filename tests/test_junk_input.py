"""What a new user may give as a call list (issue 20): junk, however small, is refused before
anything is fetched (exit 2) with what was found and what is expected; a small list of ids, a
CSV separated by semicolons or tabs, is taken; an id of binary bytes among good ones reaches
the failures file escaped, never as raw bytes."""

from __future__ import annotations

import gzip
import logging
import random
from pathlib import Path

import orjson
import pytest

from harvester.errors import InputError
from harvester.input import chunks
from harvester.input.records import InvalidRecord
from harvester.input.source import RecordFeed
from harvester.settings.values import InputFormat
from harvester.sim.server import call_id_for
from tests.conftest import read_ndjson, run_harvester


async def read(path: Path, form: str | None = None) -> list[str | InvalidRecord]:
    """Every id (or invalid record) of the call list at ``path``, as the pool takes them."""
    feed = RecordFeed(str(path), InputFormat(form) if form else None)
    try:
        await feed.opened()
        records: list[str | InvalidRecord] = []
        while batch := await feed.batch(1024):
            records.extend(r if isinstance(r, InvalidRecord) else r.key for r in batch)
        return records
    finally:
        feed.close()


@pytest.fixture(params=[7, chunks.CHUNK], ids=["7-byte-chunks", "64KiB"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Reads of this many bytes: a small file too comes in many reads, all judged together."""
    size: int = request.param
    monkeypatch.setattr(chunks, "CHUNK", size)
    return size


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        # 2,000 random bytes: a handful of "lines", none of them text.
        (random_bytes(2000, 6), "binary bytes or control characters"),
        (random_bytes(300, 1), "binary bytes or control characters"),
        (
            b"c-one\0\0\0\0\n\0\0\0",
            "binary bytes or control characters, shown escaped: 'c-one\\x00",
        ),
        ("c-one\nc-two\n".encode("utf-16"), "Save UTF-16 text as UTF-8"),
        (b"call\tx\n", "its only record is not a call id (line 1: 'call\\tx')"),
        (b"c-one\t1\nc-two\t2\n", "This looks like a tab-separated file"),
        (b"c-one;1\nc-two;2\n", "This looks like a CSV separated by semicolons"),
        (b"hello\n", "'hello': a call id is c- and up to 64 letters, digits or hyphens"),
        (b"c-one two\n", "'c-one two' holds spaces"),
        (b"c-" + b"x" * chunks.MAX_LINE, f"line longer than {chunks.MAX_LINE} bytes"),  # by 2
        (b"# my calls\n\nc-one\nsee above\nand below\n", "2 of its 3 records are not call ids"),
    ],
    ids=[
        "2000-random-bytes",
        "300-random-bytes",
        "NUL-bytes",
        "UTF-16",
        "tsv-header-without-an-id-column",
        "tsv-without-header",
        "semicolons-without-header",
        "a-word",
        "spaces-inside",
        "one-overlong-line",
        "prose-among-an-id",
    ],
)
async def test_a_small_junk_file_is_refused_saying_what_it_holds(
    tmp_path: Path, content: bytes, said: str, chunk: int
) -> None:
    path = tmp_path / "calls.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match="is not a call list") as refused:
        await read(path)
    message = str(refused.value)
    assert said in message and message.endswith("Nothing was fetched")
    assert message.isprintable(), "a terminal gets no raw bytes"


@pytest.mark.parametrize(
    "content",
    [
        b"c-3rtok7ztulq5yttum5cinva\n",  # the real API's format
        call_id_for(2, 7).encode(),  # the simulator's, without a line end
        b"c-0a1b2c3d-4e5f-6789-abcd-ef0123456789\r\n",  # the successor API's hex groups
        b"\xef\xbb\xbf  c-zan4g74pprsq  \n\n# the end\n",
        b"CallID\nc-zan4g74pprsq\n",
        b'"startTime","CallID"\r\n"2026-11-25","c-zan4g74pprsq"\r\n',
        b'{"callId": "c-zan4g74pprsq"}\n',
        gzip.compress(b"c-zan4g74pprsq\n"),
        b"c-one\nhello\n",  # one in two is not more than half
    ],
    ids=[
        "real",
        "simulator",
        "successor",
        "bom-spaces-comment",
        "csv",
        "csv-quoted",
        "ndjson",
        "gzip",
        "half-bad",
    ],
)
async def test_a_list_of_one_or_two_ids_is_taken(
    tmp_path: Path, content: bytes, chunk: int
) -> None:
    path = tmp_path / "calls"
    path.write_bytes(content)
    records = await read(path)
    assert 1 <= len(records) <= 2 and isinstance(records[0], str) and records[0][:2] == "c-"


async def test_a_hostile_id_alone_is_left_to_the_pool(tmp_path: Path) -> None:
    # It tries to be a call id: the pool lists it as invalid-call-id, sending nothing.
    path = tmp_path / "calls.txt"
    path.write_bytes(b"c-../../admin\n")
    assert await read(path) == ["c-../../admin"]


@pytest.mark.parametrize(
    ("header", "delimiter", "said"),
    [
        ("startTime;CallID;to", ";", "semicolons"),
        ("startTime\tCallID\tto", "\t", "tabs"),
        ("startTime|callId|to", "|", "'|'"),
    ],
)
async def test_a_csv_separated_otherwise_is_read_when_its_header_names_the_id_column(
    tmp_path: Path,
    header: str,
    delimiter: str,
    said: str,
    chunk: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [["2026-11-25, 10:00", "c-one", "+1"], ["x", '"c-two"', "y"], ["", "c-three", ""]]
    path = tmp_path / "calls.csv"
    path.write_text(header + "\n" + "".join(delimiter.join(row) + "\n" for row in rows))
    with caplog.at_level(logging.INFO, logger="harvester"):
        assert await read(path) == ["c-one", "c-two", "c-three"]
        assert await read(path, form="csv") == ["c-one", "c-two", "c-three"]
    assert f"a CSV separated by {said}, its call ids in column CallID" in caplog.text.replace(
        "callId", "CallID"
    )


async def test_a_csv_header_without_an_id_column_says_how_it_was_split(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text("start;call_ref;to\n2026;c-one;+1\n")
    with pytest.raises(InputError) as refused:
        await read(path)
    assert "no callId or id column (found, separated by semicolons: start, call_ref, to)" in str(
        refused.value
    )


async def test_ids_of_binary_bytes_among_good_ones_are_kept_escaped(tmp_path: Path) -> None:
    good = [f"c-{n:04d}" for n in range(20)]
    path = tmp_path / "calls.txt"
    path.write_bytes(
        "\n".join(good[:10]).encode() + b"\nc-\xff\x00\x1b[31m\tx\n" + "\n".join(good[10:]).encode()
    )
    records = await read(path)
    assert records == [*good[:10], "c-\\xff\\x00\\x1b[31m\\tx", *good[10:]]
    csv_path = tmp_path / "calls.csv"
    csv_path.write_bytes(b"callId\n" + b"c-\xfe\x07\n" + "\n".join(good).encode())
    assert (await read(csv_path))[0] == "c-\\xfe\\x07"
    ndjson = tmp_path / "calls.ndjson"
    ndjson.write_bytes(
        b'{"id": "c-\\u0000\\u202e"}\n' + b"".join(orjson.dumps({"id": i}) + b"\n" for i in good)
    )
    assert (await read(ndjson))[0] == "c-\\x00\\u202e"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"c-a\rb", "c-a\\rb"),  # a CR inside a line, not at its end
        (b"c-a\r\r", "c-a"),  # CRs at its end are stripped as spaces are
        (b" \tc-a\t ", "c-a"),
        (b"c-a\tb", "c-a\\tb"),
        (b"c-a\x7fb", "c-a\\x7fb"),
        (b"c-caf\xc3\xa9", "c-caf\u00e9"),  # printable UTF-8 is itself
        (b"c-a\xe2\x80\xaeb", "c-a\\u202eb"),  # a right-to-left override is not printable
    ],
)
async def test_what_is_not_printable_in_a_line_is_escaped_among_plain_ones(
    tmp_path: Path, line: bytes, expected: str
) -> None:
    plain = [f"c-{n:04d}".encode() for n in range(20)]
    path = tmp_path / "calls.txt"
    path.write_bytes(b"\r\n".join([*plain[:10], line, *plain[10:]]) + b"\r\n")
    assert await read(path) == [
        *(i.decode() for i in plain[:10]),
        expected,
        *(i.decode() for i in plain[10:]),
    ]


async def test_damage_met_while_judging_a_small_gzip_list_comes_after_its_calls(
    tmp_path: Path, chunk: int
) -> None:
    ids = [f"c-{n:04d}" for n in range(60)]
    path = tmp_path / "calls.txt.gz"
    path.write_bytes(gzip.compress("".join(f"{i}\n" for i in ids).encode())[:-4])  # the trailer cut
    feed = RecordFeed(str(path))
    taken: list[str] = []

    async def take_all() -> None:
        await feed.opened()  # judged on what came before the damage: ids
        while batch := await feed.batch(7):
            taken.extend(r.key for r in batch if not isinstance(r, InvalidRecord))

    try:
        with pytest.raises(InputError, match=r"damaged after line 60 .*cut off"):
            await take_all()
    finally:
        feed.close()
    assert taken == ids


def test_small_junk_stops_the_run_with_exit_2_and_nothing_written(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(random_bytes(2000, 6))
    out = tmp_path / "out" / "events.ndjson"
    done = run_harvester(sim_process, "run", "-i", str(junk), "-o", str(out), "--no-progress")
    assert done.returncode == 2, done.stderr
    assert b"is not a call list" in done.stderr and b"binary bytes" in done.stderr
    assert not (tmp_path / "out").exists()
    # Piped in, it is judged on what has come: all of it, here.
    piped = run_harvester(sim_process, "run", "-i", "-", "-o", str(out), stdin=junk.read_bytes())
    assert piped.returncode == 2 and b"is not a call list" in piped.stderr, piped.stderr


def test_a_semicolon_csv_is_harvested_and_a_binary_id_fails_escaped(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()[:12]
    rows = [f"{i};x" for i in ids[:6]] + ["c-\xff\x00;bad"] + [f"{i};y" for i in ids[6:]]
    calls = tmp_path / "calls.csv"
    calls.write_bytes(("CallID;note\n" + "\n".join(rows) + "\n").encode("latin-1"))
    out = tmp_path / "events.ndjson"
    done = run_harvester(sim_process, "run", "-i", str(calls), "-o", str(out), "--no-progress")
    assert done.returncode == 1, done.stderr  # the one bad id
    assert b"a CSV separated by semicolons" in done.stderr
    assert {e["callId"] for e in read_ndjson(out)} == set(ids)
    failures = (tmp_path / "events.failures.ndjson").read_bytes()
    assert failures.isascii() and b"\\u0000" not in failures
    (failure,) = read_ndjson(tmp_path / "events.failures.ndjson")
    assert failure["callId"] == "c-\\xff\\x00" and failure["code"] == "invalid-call-id"

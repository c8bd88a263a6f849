"""Reading call lists: every format, compressed or not, damaged lines kept as invalid records;
read in chunks that may end anywhere, a line or a character cut in two."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest

from harvester.errors import InputError
from harvester.ids import CallRef
from harvester.input import chunks
from harvester.input.chunks import MAX_LINE, Gunzip, Lines
from harvester.input.records import InvalidRecord, Record
from harvester.input.source import RecordFeed

from .conftest import until


async def read_lines(spec: Path | str, size: int = 1024, **options: Any) -> list[Record]:
    """Every record of the call list, batch after batch, as the pool takes them."""
    feed = RecordFeed(str(spec), **options)
    try:
        await feed.opened()
        records: list[Record] = []
        while batch := await feed.batch(size):
            assert len(batch) <= size
            records.extend(batch)
        return records
    finally:
        feed.close()


async def read(spec: Path | str, **options: Any) -> list[str | InvalidRecord]:
    """The ids read, in order, and the invalid records where they stand."""
    records = await read_lines(spec, **options)
    return [r if isinstance(r, InvalidRecord) else r.key for r in records]


@pytest.fixture(params=[1, 7, chunks.CHUNK], ids=["1-byte-chunks", "7-byte-chunks", "64KiB"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Reads of this many bytes: every line end, character and gzip header cut somewhere."""
    size: int = request.param
    monkeypatch.setattr(chunks, "CHUNK", size)
    return size


async def test_text_with_bom_crlf_comments_blanks_and_spaces(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "calls.txt"
    path.write_bytes(
        b"\xef\xbb\xbfc-first\r\n# a comment\r\n\r\n   c-second  \r\n"
        b"\tc-third\n  # indented\nc-last"
    )
    expected = [
        CallRef("c-first", 1),
        CallRef("c-second", 4),
        CallRef("c-third", 5),
        CallRef("c-last", 7),
    ]
    assert await read_lines(path) == expected


async def test_a_chunk_ends_inside_a_line_and_inside_a_character(
    tmp_path: Path, chunk: int
) -> None:
    ids = ["c-café", "c-日本語", "c-\U0001f4de-call", "c-plain"]
    path = tmp_path / "calls.txt"
    path.write_bytes("\r\n".join(ids).encode())  # CRLF, and no end on the last line
    assert await read(path) == ids
    ndjson = tmp_path / "calls.ndjson"
    ndjson.write_bytes("".join(f'{{"callId": "{i}"}}\r\n' for i in ids).encode())
    assert await read(ndjson) == ids


async def test_batches_are_cut_anywhere_and_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt"
    path.write_text(
        "".join(f"c-{i}\n" if i % 5 else "# every fifth a comment\n" for i in range(3000))
    )
    records = await read_lines(path, size=7)
    assert records == [CallRef(f"c-{i}", i + 1) for i in range(3000) if i % 5]


async def test_csv_with_a_callid_column(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "calls.csv"
    path.write_text('startTime,callId,to\r\n2026-11-25,c-one,+1\r\n2026-11-25,"c-two",+2\r\n\r\n')
    assert await read(path) == ["c-one", "c-two"]


async def test_csv_with_an_id_column_and_an_empty_cell(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "calls.csv"
    path.write_text("id,state\nc-one,completed\n,completed\nc-three\n")
    assert await read(path) == ["c-one", InvalidRecord(3, "empty call id cell"), "c-three"]


async def test_a_quoted_csv_field_over_several_lines_and_chunks(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "calls.csv"
    path.write_bytes(
        b'# export\ncallId,note\nc-one,"a note\r\nover three\nlines"\nc-two,x\r"c-three",\n'
    )
    # A row's number is its last line's, CR alone ending a line too (as the csv module counts).
    expected = [CallRef("c-one", 5), CallRef("c-two", 6), CallRef("c-three", 7)]
    assert await read_lines(path) == expected


async def test_csv_without_an_id_column_fails_before_anything_else(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text("call,state\nc-one,completed\n")
    feed = RecordFeed(str(path))
    with pytest.raises(InputError, match="no callId or id column"):
        await feed.opened()
    feed.close()


@pytest.mark.parametrize("suffix", [".ndjson", ".jsonl"])
async def test_ndjson_objects_with_callid_or_id(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"calls{suffix}"
    path.write_text(
        '{"callId": "c-one", "x": 1}\n\n{"id": "c-two"}\n{not json\n[1]\n{"other": "c-x"}\n'
        '{"callId": 123}\n{"id": "c-three"}\n{"id": "c-four"}\n'  # most records are ids
    )
    records = await read(path)
    assert records[:2] == ["c-one", "c-two"]
    assert records[2] == InvalidRecord(4, "not valid JSON (at byte 2)")
    assert records[3:] == [
        InvalidRecord(5, "not a JSON object but list"),
        InvalidRecord(6, "no callId or id field"),
        InvalidRecord(7, "callId is not a call id string: 123"),
        "c-three",
        "c-four",
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
async def test_gzip_compressed_inputs(
    tmp_path: Path, name: str, content: bytes, chunk: int
) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(content))
    assert await read(path) == ["c-one", "c-two"]


async def test_gzip_members_one_after_another(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "calls.gz"
    # As `cat a.gz b.gz` makes them, a line cut between two members, and zero padding (tar).
    path.write_bytes(
        gzip.compress(b"c-one\nc-t") + gzip.compress(b"wo\n") + b"\0" * 9 + gzip.compress(b"c-3")
    )
    assert await read_lines(path) == [CallRef("c-one", 1), CallRef("c-two", 2), CallRef("c-3", 3)]


@pytest.mark.parametrize("feed", [16, 1 << 20])
def test_a_small_gzip_inflates_a_bounded_piece_at_a_time(feed: int) -> None:
    # Long runs (long back-references), 4.5 MB in a few KB.
    plain = b"".join(b"c-" + b"7" * (i * 37 % 3000) + b"\n" for i in range(3000))
    packed = gzip.compress(plain)
    gunzip, unbounded = Gunzip(), zlib.decompressobj(wbits=31)
    pieces, available = [], 0
    for start in range(0, len(packed), feed):
        gunzip.feed(packed[start : start + feed])
        while piece := gunzip.inflate(1000):
            pieces.append(piece)
        # All that this much input can give, though zlib may have taken the input to the last
        # byte and still hold output: a gzip pipe's lines must not wait for more input.
        available += len(unbounded.decompress(packed[start : start + feed]))
        assert sum(map(len, pieces)) == available
    gunzip.end()  # the member ended: no error
    assert max(len(p) for p in pieces) == 1000
    assert b"".join(pieces) == plain


def test_a_line_without_end_is_held_only_as_far_as_needed() -> None:
    lines = Lines(universal=False)
    for _ in range(100):
        lines.feed(b"x" * 100_000)  # 10 MB, no line end yet
        assert lines.take(10) == []
    lines.feed(b"\nc-next\n")
    overlong, after = lines.take(10)
    assert MAX_LINE < len(overlong) <= MAX_LINE + 1 and after == b"c-next"


async def test_empty_inputs_hold_no_record(tmp_path: Path) -> None:
    for name, content in [
        ("empty.txt", b""),
        ("empty", b""),
        ("empty.csv", b""),
        ("blank.ndjson", b"\n\r\n  \n"),
        ("empty.txt.gz", gzip.compress(b"")),
        ("header-only.csv.gz", gzip.compress(b"callId\n")),
    ]:
        (tmp_path / name).write_bytes(content)
        assert await read(tmp_path / name) == [], name


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"callId":"c-one"}\n', ["c-one"]),
        (b"# export\ncallId,state\nc-one,done\n", ["c-one"]),
        (b"c-one\nc-two\n", ["c-one", "c-two"]),
    ],
)
async def test_format_is_sniffed_when_the_name_says_nothing(
    tmp_path: Path, content: bytes, expected: list[str], chunk: int
) -> None:
    path = tmp_path / "calls"
    path.write_bytes(content)
    assert await read(path) == expected


async def test_an_overlong_line_is_one_invalid_record_and_reading_goes_on(
    tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk == 1:
        pytest.skip("200,000 one-byte reads say nothing more than seven-byte ones")
    if chunk == 7:  # reads that cut the long lines at odd places, but not 37,000 of them
        monkeypatch.setattr(chunks, "CHUNK", 4099)
    path = tmp_path / "calls.txt"
    path.write_bytes(b"c-one\n" + b"x" * (3 * MAX_LINE) + b"\nc-two\n" + b"y" * (MAX_LINE + 1))
    assert await read(path) == [
        "c-one",
        InvalidRecord(2, f"line longer than {MAX_LINE} bytes"),
        "c-two",
        InvalidRecord(4, f"line longer than {MAX_LINE} bytes"),
    ]


async def test_invalid_utf8_is_kept_visible_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt"
    path.write_bytes(b"c-\xff\xfe\nc-two\n")
    assert await read(path) == ["c-\\xff\\xfe", "c-two"]  # escaped, not lost as U+FFFD


async def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"input file .*nope\.txt does not exist"):
        await read(tmp_path / "nope.txt")


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        await read(tmp_path)


async def test_a_truncated_gzip_file_gives_what_came_before_then_an_input_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "calls.txt.gz"
    content = "".join(f"c-{i * 7919 % 100_003}\n" for i in range(50_000)).encode()
    cut = gzip.compress(content)[:5000]
    path.write_bytes(cut)
    whole_lines = zlib.decompressobj(31).decompress(cut).split(b"\n")[:-1]
    assert len(whole_lines) > 100

    records: list[Record] = []

    async def harvest() -> None:
        feed = RecordFeed(str(path))
        try:
            await feed.opened()
            while batch := await feed.batch(1024):
                records.extend(batch)
        finally:
            feed.close()

    with pytest.raises(InputError, match=f"damaged after line {len(whole_lines)} ") as error:
        await harvest()

    assert records == [CallRef(line.decode(), n) for n, line in enumerate(whole_lines, 1)]
    assert "\n" not in str(error.value)


def read_so_far(path: Path) -> int:
    """How far this process's open descriptor of ``path`` has read (Linux's /proc says)."""
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if fd.resolve() == path.resolve():
                info = Path(f"/proc/self/fdinfo/{fd.name}").read_text()
                return int(info.split("pos:")[1].split()[0])
    raise AssertionError(f"{path} is not open")


async def test_a_big_file_is_read_as_a_stream(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt"
    with path.open("w") as f:
        for i in range(200_000):
            f.write(f"c-{i:020d}\n")
    feed = RecordFeed(str(path))
    try:
        await feed.opened()
        first = await feed.batch(1024)
        assert first[0] == CallRef("c-00000000000000000000", 1)
        # One chunk has been read, not the file: the offset of the reader's descriptor.
        assert read_so_far(path) <= chunks.CHUNK < path.stat().st_size
        count = len(first)
        while batch := await feed.batch(1024):
            count += len(batch)
        assert count == 200_000
    finally:
        feed.close()


async def test_a_pipe_gives_its_lines_as_they_are_written(chunk: int) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"c-first\nc-sec")
    feed = RecordFeed(f"/dev/fd/{read_end}")
    try:
        await feed.opened()
        # The writer is still there: the first line comes now, not at the end of the list.
        assert await asyncio.wait_for(feed.batch(1024), 5) == [CallRef("c-first", 1)]
        os.write(write_end, b"ond\n")
        assert await asyncio.wait_for(feed.batch(1024), 5) == [CallRef("c-second", 2)]
        os.close(write_end)
        assert await feed.batch(1024) == []
    finally:
        feed.close()
        os.close(read_end)


async def test_a_fifo_is_waited_for_off_the_event_loop(tmp_path: Path) -> None:
    fifo = tmp_path / "calls.fifo"
    os.mkfifo(fifo)
    feed = RecordFeed(str(fifo))
    opening = asyncio.ensure_future(feed.opened())
    ticks = 0
    for _ in range(20):  # the loop runs on while open() waits for a writer
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 20 and not opening.done()

    writer = threading.Thread(target=fifo.write_bytes, args=(b"c-one\nc-two\n",))
    writer.start()
    try:
        assert await asyncio.wait_for(opening, 5) == {"input": "-"}
        records: list[Record] = []
        while batch := await asyncio.wait_for(feed.batch(1024), 5):
            records.extend(batch)
        assert records == [CallRef("c-one", 1), CallRef("c-two", 2)]
    finally:
        feed.close()
        writer.join()


def opening_on_the_input_thread() -> bool:
    """True while a ``harvester-input`` thread runs the reader's open (as its Python stack
    shows): a close from then on cannot call the open off, which waits for a writer."""
    opening = chunks.ChunkReader._open_on_thread.__code__
    stacks = sys._current_frames()
    for thread in threading.enumerate():
        frame = stacks.get(thread.ident or 0) if thread.name == "harvester-input" else None
        while frame is not None:
            if frame.f_code is opening:
                return True
            frame = frame.f_back
    return False


async def test_closing_a_feed_that_waits_on_a_fifo_leaves_no_thread_to_wait_for(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "calls.fifo"
    os.mkfifo(fifo)
    feed = RecordFeed(str(fifo))
    opening = asyncio.ensure_future(feed.opened())
    await until(opening_on_the_input_thread, "open() called on the input's thread")
    feed.close()
    with pytest.raises(asyncio.CancelledError):
        await opening
    blocked = [t for t in threading.enumerate() if t.name == "harvester-input" and t.is_alive()]
    # Still in open() for good, and a daemon: the interpreter's exit does not join it.
    assert blocked and all(t.daemon for t in blocked)
    with fifo.open("wb"):  # let it go: open() returns, the file is closed on its thread
        pass
    for thread in blocked:
        thread.join(5)
    assert not any(t.is_alive() for t in blocked)


@pytest.mark.parametrize(
    ("name", "content", "flags"),
    [
        ("calls.txt", "callId,note\nc-one,x\nc-two,y\n", {}),  # a CSV named .txt
        ("calls.txt", '{"callId":"c-one"}\n{"callId":"c-two"}\n', {}),  # NDJSON named .txt
        ("calls.csv", "CallID\nc-one\nc-two\n", {}),  # one column, header in another case
        ("calls", "note,call_id\nx,c-one\ny,c-two\n", {"id_column": "call_id"}),
        ("calls.dat", "call_ref,x\nc-one,1\nc-two,2\n", {"form": "csv", "id_column": "CALL_REF"}),
        ("calls.csv", "c-one\nc-two\n", {"form": "text"}),
        ("x.ndjson", '{"ref":"c-one"}\n{"ref":"c-two"}\n', {"id_column": "ref"}),
    ],
)
async def test_the_format_is_what_the_content_or_the_flags_say(
    tmp_path: Path, name: str, content: str, flags: dict[str, str]
) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert await read(path, **flags) == ["c-one", "c-two"]


async def test_a_list_whose_first_records_are_mostly_not_ids_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "calls.txt"
    path.write_text("".join(f"{n};c-{n:04d};note\n" for n in range(50)))
    with pytest.raises(InputError, match=r"50 of its 50 records are not call ids .* --input-f"):
        await read(path)
    path.write_text("".join(f"c-{n:04d}\n" for n in range(45)) + "bad one\n" * 5)
    assert len(await read(path)) == 50, "a few bad lines among ids are the pool's business"

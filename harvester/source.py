"""Where call ids come from: a call list file (or stdin), read as a stream.

Formats, chosen by extension and, where that says nothing, by content:

- plain text: one id a line; blank lines and ``#`` comments skipped; CRLF, a UTF-8 BOM and
  surrounding spaces tolerated;
- ``.csv`` with a header naming a ``callId`` or ``id`` column;
- ``.ndjson`` / ``.jsonl``: one object a line with ``callId`` or ``id``;
- any of these gzip-compressed (recognised by its magic bytes, ``.gz`` or not).

A record that holds no id at all (a broken JSON line, an empty CSV cell, an overlong line)
becomes an ``InvalidRecord`` so the run can list it in the failures file rather than lose it.
Each id comes with its input line, which tells a re-read record from a duplicate on resume.
Whether an id is well-formed is the pool's business, not the reader's.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import hashlib
import io
import os
import stat
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from harvester.errors import InputError

MAX_LINE = 64 * 1024
ID_FIELDS = ("callId", "id")
_GZIP_MAGIC = b"\x1f\x8b"
# What a damaged (truncated, corrupt) gzip input raises while it is read.
_CORRUPT = (OSError, EOFError, zlib.error)
# What to do then: a repaired file is another file to the ledger.
_AFTER_DAMAGE = (
    "Put the calls after it in a call list of their own and harvest that to another --output, "
    "or repair the file and start over with --fresh"
)


def is_stream(spec: str) -> bool:
    """True for ``-`` and any path that is not a regular file (a pipe, a FIFO, a device): it is
    read once, as it comes, and never opened twice."""
    if spec == "-":
        return True
    try:
        return not stat.S_ISREG(os.stat(spec).st_mode)
    except OSError:
        return False  # the reader says what is wrong with it, in its own words


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A line of the input that names no call; ``line`` counts from 1."""

    line: int
    reason: str


# An id with the input line it came from, or a line that names no call.
Record = tuple[int, str] | InvalidRecord


class CallList:
    """An open call list: iterate it for records. Opening checks what can be checked up front
    (the file exists, the CSV header names an id column), so a bad file fails before any fetch.
    """

    def __init__(self, spec: str) -> None:
        self.name = "stdin" if spec == "-" else spec
        self.stream = is_stream(spec)  # read once, as it comes: stdin, a pipe, a FIFO
        self._text: io.TextIOWrapper | None = None
        self._raw = self._open(spec)
        try:
            self._records = self._parse(spec)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[Record]:
        return self._records

    def close(self) -> None:
        """Close the file (for stdin, harvester's own descriptor of it)."""
        if self._text is not None:
            self._text.detach()
            self._text = None
        self._raw.close()

    def __enter__(self) -> CallList:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, spec: str) -> BinaryIO:
        if spec == "-":
            if sys.stdin is None:
                raise InputError("stdin is closed: pipe the call list in, or give its path")
            # A descriptor of our own, not sys.stdin: a read that blocks holds only our buffer's
            # lock, never the one the interpreter takes to close sys.stdin at exit.
            try:
                return os.fdopen(os.dup(sys.stdin.fileno()), "rb")
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read stdin: {exc}") from None
        path = Path(spec)
        try:
            if path.is_dir():
                raise InputError(f"input {spec} is a directory; give a call list file")
            return path.open("rb")
        except FileNotFoundError:
            raise InputError(f"input file {spec} does not exist") from None
        except OSError as exc:
            raise InputError(f"cannot open input file {spec}: {exc.strerror}") from None

    def _parse(self, spec: str) -> Iterator[Record]:
        stream: Any = self._raw
        if not hasattr(stream, "peek"):
            stream = io.BufferedReader(stream)
        try:
            compressed = stream.peek(2)[:2] == _GZIP_MAGIC
        except OSError as exc:
            raise InputError(f"cannot read input {self.name}: {exc}") from None
        if compressed:
            stream = gzip.GzipFile(fileobj=stream, mode="rb")
        name = spec.lower().removesuffix(".gz")
        if name.endswith(".csv"):
            kind = "csv"
        elif name.endswith((".ndjson", ".jsonl")):
            kind = "ndjson"
        elif name.endswith(".txt"):
            kind = "text"
        else:
            kind = self._sniff(stream)
        try:
            if kind == "csv":
                self._text = io.TextIOWrapper(
                    stream,
                    encoding="utf-8-sig",
                    errors="replace",
                    newline="",
                )
                return _csv_records(self._text, self.name)
            if kind == "ndjson":
                return _ndjson_records(stream)
            return _text_records(stream)
        except _CORRUPT as exc:
            raise InputError(f"cannot read input {self.name}: {exc}") from None

    def _sniff(self, stream: Any) -> str:
        """Guess the format from the first line with something on it (stdin, unknown suffix)."""
        try:
            head: bytes = stream.peek(MAX_LINE)[:MAX_LINE]
        except _CORRUPT as exc:
            raise InputError(f"cannot read input {self.name}: {exc}") from None
        for raw in head.removeprefix(b"\xef\xbb\xbf").splitlines():
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            if line.startswith(b"{"):
                return "ndjson"
            cells = [c.strip().strip('"') for c in line.decode("utf-8", "replace").split(",")]
            if len(cells) > 1 and any(c in ID_FIELDS for c in cells):
                return "csv"
            return "text"
        return "text"


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its end) for each line; None for a line over MAX_LINE."""
    number = 0
    while True:
        try:
            raw = stream.readline(MAX_LINE + 1)
        except _CORRUPT as exc:
            raise InputError(
                f"the input is damaged after line {number} ({exc}); what came before it is "
                f"harvested. {_AFTER_DAMAGE}"
            ) from None
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the overlong line
                raw = stream.readline(MAX_LINE)
            yield number, None
            continue
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        yield number, raw.rstrip(b"\r\n")


def _text_records(stream: BinaryIO) -> Iterator[Record]:
    for number, raw in _lines(stream):
        if raw is None:
            yield InvalidRecord(number, f"line longer than {MAX_LINE} bytes")
            continue
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        yield number, line.decode("utf-8", "replace")


def _ndjson_records(stream: BinaryIO) -> Iterator[Record]:
    for number, raw in _lines(stream):
        if raw is None:
            yield InvalidRecord(number, f"line longer than {MAX_LINE} bytes")
            continue
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield InvalidRecord(number, "not a JSON object")
            continue
        yield _id_of(obj, number)


def _id_of(obj: object, number: int) -> Record:
    if not isinstance(obj, dict):
        return InvalidRecord(number, "not a JSON object")
    for key in ID_FIELDS:
        value = obj.get(key)
        if isinstance(value, str) and value.strip():
            return number, value.strip()
    return InvalidRecord(number, "no callId or id field")


def _csv_records(text: io.TextIOWrapper, name: str) -> Iterator[Record]:
    reader = csv.reader(text)
    try:
        # The header is the first row that is neither blank nor a # comment.
        header = next(
            (row for row in reader if row and row[0].strip() and not row[0].startswith("#")),
            None,
        )
    except csv.Error as exc:
        raise InputError(f"input {name}: the CSV header cannot be parsed: {exc}") from None
    except _CORRUPT as exc:
        raise InputError(f"cannot read input {name}: {exc}") from None
    if header is None:
        return iter(())
    columns = [c.strip() for c in header]
    for key in ID_FIELDS:
        if key in columns:
            return _csv_rows(reader, columns.index(key))
    raise InputError(
        f"input {name}: the CSV header has no callId or id column (found: {', '.join(columns)})"
    )


def _csv_rows(reader: Any, column: int) -> Iterator[Record]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield InvalidRecord(reader.line_num, f"CSV row cannot be parsed: {exc}")
            continue
        except _CORRUPT as exc:
            raise InputError(
                f"the input is damaged after line {reader.line_num} ({exc}); what came before "
                f"it is harvested. {_AFTER_DAMAGE}"
            ) from None
        row_number = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        value = row[column].strip() if column < len(row) else ""
        yield (row_number, value) if value else InvalidRecord(row_number, "empty call id cell")


class RecordFeed:
    """The call list, opened and read on a daemon thread of its own into a bounded buffer.

    The event loop takes what is there (``batch``): records from a slow pipe flow to the
    workers one by one as they come, a file's in large batches, and the buffer never holds more
    than ``high`` records. A pipe, a FIFO that waits for its writer in ``open``, or a terminal
    may block the thread for as long as they like: never the event loop (signals are still
    heard), and never the process's exit (an executor's thread is joined at exit, forever on a
    stdin that never ends). The file is touched by that thread only, closed there too.

    The buffer is a deque, whose appends and pops are atomic: the lock is taken only to wake a
    side that waits (each sets its flag, then looks again, so no wake-up is missed).
    """

    def __init__(self, spec: str, high: int = 4096) -> None:
        self._spec = spec
        self._high = high
        self._loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._ready = asyncio.Event()
        self._lock = threading.Condition(threading.Lock())
        self._buffer: deque[Record] = deque()
        self._waiting = False  # the loop waits for a record
        self._full = False  # the thread waits for room
        self._end: BaseException | bool = False  # True at the end; an error if reading failed
        self._closed = False
        threading.Thread(target=self._read, name="harvester-input", daemon=True).start()

    async def opened(self) -> dict[str, Any]:
        """Wait until the call list is open; its identity (see ``identify``)."""
        return await self._opened

    async def batch(self, size: int) -> list[Record]:
        """Up to ``size`` records, waiting for one at least; [] at the end of the list."""
        buffer = self._buffer
        while True:
            if buffer:
                records = [buffer.popleft() for _ in range(min(size, len(buffer)))]
                if self._full:
                    with self._lock:
                        self._lock.notify()
                return records
            with self._lock:
                self._waiting = True
                self._ready.clear()
                if buffer or self._end is not False:
                    self._waiting = False
            if self._waiting:
                await self._ready.wait()
            elif not buffer:
                if isinstance(self._end, BaseException):
                    raise self._end
                return []

    def close(self) -> None:
        """Stop reading; the thread closes the file (at once, or when its read returns)."""
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _read(self) -> None:
        calls: CallList | None = None
        buffer, high = self._buffer, self._high
        try:
            calls = CallList(self._spec)
            self._post(_resolve, self._opened, identify(self._spec))
            for record in calls:
                buffer.append(record)
                if self._waiting:
                    self._wake()
                if len(buffer) >= high and not self._room():
                    return
            self._finish(True)
        except Exception as exc:
            if not self._opened.done():
                self._post(_fail, self._opened, exc)
            self._finish(exc)
        finally:
            if calls is not None:
                calls.close()

    def _room(self) -> bool:
        """Wait until the loop has taken records; False when the feed was closed meanwhile."""
        with self._lock:
            self._full = True
            while len(self._buffer) >= self._high and not self._closed:
                self._lock.wait()
            self._full = False
            return not self._closed

    def _finish(self, end: BaseException | bool) -> None:
        self._end = end
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting = False
                self._post(self._ready.set)

    def _post(self, function: Callable[..., object], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(function, *args)


def identify(spec: str) -> dict[str, Any]:
    """What makes a call list the same one on a re-run: its path, size and first MiB.

    A stream (stdin, a pipe, a FIFO) cannot be read twice, so it is known only as a stream:
    every run reads it through, and what is done is skipped.
    """
    if is_stream(spec):
        return {"input": "-"}
    path = Path(spec).resolve()
    try:
        with path.open("rb") as f:
            head = f.read(1024 * 1024)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return {"input": str(path)}  # the reader reports the problem in its own words
    return {"input": str(path), "size": size, "head_sha256": hashlib.sha256(head).hexdigest()}


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

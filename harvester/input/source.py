"""Where call ids come from: a call list file (or stdin), read as a stream.

Formats, as ``--input-format`` says, or else as the content says (its first line with
something on it; the file's name only where the content cannot tell):

- plain text: one id a line; blank lines and ``#`` comments skipped; CRLF, a UTF-8 BOM and
  surrounding spaces tolerated;
- CSV with a header naming a ``callId`` or ``id`` column (or ``--id-column``), in any case,
  separated by commas, or else by semicolons, tabs or ``|`` (whichever splits the header into
  one that names the id column);
- NDJSON: one object a line with ``callId`` or ``id`` (or ``--id-column``);
- any of these gzip-compressed (recognised by its magic bytes, ``.gz`` or not), in one member
  or several.

A record that holds no id at all (a broken JSON line, an empty CSV cell, an overlong line)
becomes an ``InvalidRecord`` so the run can list it in the failures file rather than lose it.
Each id comes with its input line, which tells a re-read record from a duplicate on resume.
An id that is not printable UTF-8 (binary bytes, NUL, control characters) is kept as its escaped
form (``c-\\xff``, as Python's ``repr`` shows it): the failures file and the ledger get text,
never raw bytes. Whether an id is well-formed is the pool's business, not the reader's; but when
most of the first records (of a file: its first ``CHECKED``, or all it has, however few) hold no
call id at all, the list is not what it seems (binary junk, a CSV read as text, a tab-separated
file), and it is refused before any of it is used.

The file is read in large chunks through aiofiles (``ChunkReader``), gunzipped, cut into lines
and parsed in the event loop a batch at a time (``RecordFeed``): no thread hop per line.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import sys
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

import orjson

from harvester.errors import InputError
from harvester.input.chunks import MAX_LINE, ChunkReader, Lines, is_stream
from harvester.input.formats import (
    ANOTHER_FORMAT,
    DELIMITER_NAMES,
    DELIMITERS,
    looks_like_id,
    not_an_id,
    sniff,
)
from harvester.settings.values import InputFormat

log = logging.getLogger("harvester")

ID_FIELDS = ("callId", "id")
# A list is refused when more than this share of its first CHECKED records hold no call id.
# A file is read that far (or to its end) before any record is used; a stream only as far as
# it has come, since waiting for more would hold up a pipe's first calls.
CHECKED, NOT_IDS_SHARE = 100, 0.5
_TOO_LONG = f"line longer than {MAX_LINE} bytes"
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
# Why the csv module (which reads every line end) gives up on a row, in our words.
_UNPARSED = f" (a field over {csv.field_size_limit() // 1024} KiB: a quote left open?)"
# What a damaged (truncated, corrupt) input raises while it is read.
_CORRUPT = (OSError, EOFError, zlib.error)
# What to do then: a repaired file is another file to the ledger.
_AFTER_DAMAGE = (
    "Put the calls after it in a call list of their own and harvest that to another --output, "
    "or repair the file and start over with --fresh"
)


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A line of the input that names no call; ``line`` counts from 1."""

    line: int
    reason: str


# An id with the input line it came from, or a line that names no call.
Record = tuple[int, str] | InvalidRecord


def _text_records(lines: list[bytes], number: int, out: list[Record]) -> None:
    """Records of ``lines`` into ``out``; ``number`` is that of the line before them."""
    # Lines that are all printable ASCII once their ends are stripped (as a list of ids is),
    # told so in one pass over the batch: checking line by line would cost a quarter more.
    text_of = bytes.decode if _plain(lines) else _text_of
    for raw in lines:
        number += 1
        if len(raw) > MAX_LINE:
            out.append(InvalidRecord(number, _TOO_LONG))
            continue
        line = raw.strip()
        if line and not line.startswith(b"#"):
            out.append((number, text_of(line)))


def _plain(lines: list[bytes]) -> bool:
    """True when every line is printable ASCII, but a CR at its end."""
    joined = b"\n".join(lines)
    if not joined.isascii() or joined.translate(None, _PRINTABLE_ASCII).strip(b"\r\n"):
        return False
    crs = joined.count(b"\r")
    return crs == 0 or crs == joined.count(b"\r\n") + joined.endswith(b"\r")


def _text_of(line: bytes) -> str:
    """A stripped line as text, escaped (``_printable``) if it is not printable UTF-8."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return _printable(line.decode("utf-8", "surrogateescape"))
    return text if text.isprintable() else _printable(text)


def _ndjson_records(fields: tuple[str, ...]) -> Callable[[list[bytes], int, list[Record]], None]:
    """A parser of NDJSON lines whose id is in the first of ``fields`` an object has."""

    def parse(lines: list[bytes], number: int, out: list[Record]) -> None:
        for raw in lines:
            number += 1
            if len(raw) > MAX_LINE:
                out.append(InvalidRecord(number, _TOO_LONG))
                continue
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                # Where, not orjson's words: those may quote the line's bytes.
                out.append(InvalidRecord(number, f"not valid JSON (at byte {exc.pos + 1})"))
                continue
            out.append(_id_of(obj, number, fields))

    return parse


def _printable(text: str) -> str:
    """``text`` with what is not printable escaped as ``repr`` escapes it (``\\t``,
    ``\\x00``, ``\\u200b``), and the bytes that were not UTF-8 (``surrogateescape``'s lone
    surrogates) as ``\\xNN``: an id fit for a JSON line, a log and a terminal."""
    # Only the escapes tell such an id from what it stood for: two ids that differ only there
    # are the same to the ledger. Both are invalid, so one is at worst counted a duplicate.
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # the byte 0x80-0xff that ``surrogateescape`` stood for
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1]


def _id_of(obj: object, number: int, fields: tuple[str, ...]) -> Record:
    if not isinstance(obj, dict):
        return InvalidRecord(number, f"not a JSON object but {type(obj).__name__}")
    for key in fields:
        if key not in obj:
            continue
        value = obj[key]
        if isinstance(value, str) and value.strip():
            text = value.strip()
            return number, text if text.isprintable() else _printable(text)
        shown = orjson.dumps(value)[:40].decode(errors="replace")
        return InvalidRecord(number, f"{key} is not a call id string: {shown}")
    return InvalidRecord(number, f"no {' or '.join(fields)} field")


class _CsvRows:
    """CSV rows from lines that come a chunk at a time.

    ``csv.reader`` pulls lines from this object. A row that runs past the lines given so far (a
    quoted field with a line break in it) is put back and read again, whole, once more lines
    are in: the reader keeps nothing between rows. A row's number is that of its last line, as
    ``csv.reader.line_num`` counts. The columns are separated by commas, or else by the first of
    ``DELIMITERS`` that makes the header name the id column.
    """

    def __init__(self, name: str, fields: tuple[str, ...]) -> None:
        self._name = name
        self._fields = fields
        self._pending: deque[tuple[int, bytes]] = deque()
        self._row: list[tuple[int, bytes]] = []  # the lines of the row being read
        self._cut = False  # the lines ran out inside a row
        self._line = 0
        self._reported = 0  # the last overlong line reported, so that a row read again is not
        self._overlong: list[Record] = []
        self._delimiter = ","
        self._reader = csv.reader(self)
        self.column: int | None = None  # of the ids, once the header is read

    def push(self, first: int, lines: list[bytes]) -> None:
        self._pending.extend(zip(count(first), lines, strict=False))

    def header(self, final: bool) -> bool:
        """Look for the header (the first row neither blank nor a # comment) in the lines so
        far; True once it is read, or the input ended without one."""
        while self._pending:
            row = self._next_row(final)
            self._overlong.clear()
            if row is None:
                return False
            if isinstance(row, csv.Error):
                raise InputError(f"input {self._name}: the CSV header cannot be parsed{_UNPARSED}")
            if row and row[0].strip() and not row[0].startswith("#"):
                self._read_header(row)
                return True
        return final

    def _read_header(self, row: list[str]) -> None:
        """Find the id column in the header ``row`` (read with commas), or in the header's
        lines read with another delimiter; ``InputError`` if none has it."""
        text = "".join(raw.decode("utf-8", "surrogateescape") for _, raw in self._row)
        rows = {",": row}
        for delimiter in DELIMITERS:
            if delimiter not in rows:
                rows[delimiter] = next(csv.reader([text], delimiter=delimiter), [])
            columns = [c.strip().removeprefix("\ufeff").lower() for c in rows[delimiter]]
            for key in self._fields:
                if key.lower() in columns:
                    self.column = columns.index(key.lower())
                    if delimiter != ",":
                        # The reader keeps nothing between rows: the next is read with this.
                        self._delimiter = delimiter
                        self._reader = csv.reader(self, delimiter=delimiter)
                        log.info(
                            "input %s: a CSV separated by %s, its call ids in column %s",
                            self._name,
                            DELIMITER_NAMES[delimiter],
                            _printable(rows[delimiter][self.column].strip()),
                        )
                    return
        # Shown as the delimiter that splits it most would read it: the columns it has.
        delimiter = max(DELIMITERS, key=lambda d: len(rows[d]))
        found = ", ".join(_printable(c.strip()) for c in rows[delimiter])
        separated = f", separated by {DELIMITER_NAMES[delimiter]}" if delimiter != "," else ""
        raise InputError(
            f"input {self._name}: the CSV header has no {' or '.join(self._fields)} column "
            f"(found{separated}: {found}); name the column with --id-column, or give the file "
            "a header row that names it"
        )

    def records(self, out: list[Record], size: int, final: bool) -> None:
        """Records from the lines so far, until ``out`` holds ``size``; ``final``: no more
        lines will come."""
        column = self.column
        while len(out) < size and self._pending and column is not None:
            row = self._next_row(final)
            out.extend(self._overlong)
            self._overlong.clear()
            if row is None:
                return
            number = self._line
            if isinstance(row, csv.Error):
                out.append(InvalidRecord(number, f"CSV row cannot be parsed{_UNPARSED}"))
                continue
            if not row or all(not cell.strip() for cell in row):
                continue
            value = row[column].strip() if column < len(row) else ""
            if not value.isprintable():
                value = _printable(value)
            out.append((number, value) if value else InvalidRecord(number, "empty call id cell"))

    def _next_row(self, final: bool) -> list[str] | csv.Error | None:
        """The next row (or its error); None if the lines so far end inside it."""
        self._row, self._cut = [], False
        try:
            row: list[str] | csv.Error | None = next(self._reader)
        except StopIteration:
            row = None
        except csv.Error as exc:
            row = exc
        if self._cut and not final:
            self._pending.extendleft(reversed(self._row))
            self._reader = csv.reader(self, delimiter=self._delimiter)
            return None
        return row

    def __iter__(self) -> _CsvRows:
        return self

    def __next__(self) -> str:
        if not self._pending:
            self._cut = bool(self._row)
            raise StopIteration
        number, raw = line = self._pending.popleft()
        self._row.append(line)
        self._line = number
        if len(raw) > MAX_LINE:
            if number > self._reported:
                self._reported = number
                self._overlong.append(InvalidRecord(number, _TOO_LONG))
            return "\n"
        # Bytes that are not UTF-8 stay themselves (as lone surrogates) until ``_printable``
        # escapes them in the id.
        return raw.decode("utf-8", "surrogateescape")


class RecordFeed:
    """The call list's records, read as a stream (``ChunkReader``) and parsed in the event
    loop a batch at a time.

    ``batch`` parses what has been read and reads on only when that is used up: a slow pipe's
    records reach the workers as they come, a file's in full batches. Memory holds the lines of
    one chunk at most. Reading, like opening, happens off the event loop on a daemon thread, so
    a FIFO without a writer or a stdin that never ends holds neither the loop nor the exit.
    """

    def __init__(
        self, spec: str, form: InputFormat | None = None, id_column: str | None = None
    ) -> None:
        self._spec = spec
        self._form = form
        self._fields = (id_column,) if id_column else ID_FIELDS
        self._first: list[Record] = []  # read and looked at when opening; handed out first
        self._input = ChunkReader(spec)
        self._stream = is_stream(spec)
        self._opening: asyncio.Task[dict[str, Any]] | None = None
        self._lines = Lines(universal=False)
        self._parse: Callable[[list[bytes], int, list[Record]], None] = _text_records
        self._csv: _CsvRows | None = None
        self._ended = False  # the input is read to its end
        self._damage: BaseException | None = None  # what reading it raised, raised again
        self._closed = False

    async def opened(self) -> dict[str, Any]:
        """Wait until the call list is open, its format known (and a CSV header read); its
        identity (see ``identify``)."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        return await self._opening

    async def batch(self, size: int) -> list[Record]:
        """Up to ``size`` records, waiting for one at least; [] at the end of the list."""
        await self.opened()
        records = self._first[:size]  # those looked at when it opened, first
        del self._first[:size]
        while not self._closed and not self._first:
            self._take(size, records)
            if records or self._ended:
                break
            await self._read_more(opening=False)
        return records

    def _check(self, first: list[Record], whole: bool) -> None:
        """Refuse a list whose first records (``whole``: all it has) mostly hold no call id,
        however few: it is not what it seems."""
        # Only what does not even try to be a call id: a hostile or mistyped id ("c-../x")
        # is the pool's to list as invalid, one of a list of ids.
        bad = [r for r in first if isinstance(r, InvalidRecord) or not looks_like_id(r[1])]
        if len(bad) <= NOT_IDS_SHARE * len(first):
            return
        example = bad[0]
        if isinstance(example, InvalidRecord):
            line, what, hint = example.line, example.reason, ANOTHER_FORMAT
        else:
            line, (what, hint) = example[0], not_an_id(example[1])
        if len(first) == 1:
            counted = "its only record is not a call id"
        else:
            of = f"its {len(first)}" if whole else f"its first {len(first)}"
            counted = f"{len(bad)} of {of} records are not call ids"
        raise InputError(
            f"input {self._input.name} is not a call list: {counted} (line {line}: {what}). "
            f"{hint}. Nothing was fetched"
        )

    def close(self) -> None:
        """Stop reading; the file is closed on the reader's thread (at once, or when its read
        returns)."""
        self._closed = True
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        self._input.close()

    async def _open(self) -> dict[str, Any]:
        await self._input.open()
        # Before the first read: its megabyte and the first chunk are not held at once.
        identity = await self._input.identify()
        name = self._spec.lower().removesuffix(".gz")
        # The first bytes, read now (a pipe: waited for) so that a file that cannot be read
        # fails before any fetch; when the name does not tell the format, on to a line that
        # does, MAX_LINE bytes, or the end.
        head = await self._read(opening=True)
        kind = self._form
        if kind is None:
            while len(head) < MAX_LINE and sniff(head, False, self._fields) is None:
                more = await self._read(opening=True)
                if not more:
                    break
                head += more
            hint = InputFormat.CSV if name.endswith(".csv") else None
            hint = InputFormat.NDJSON if name.endswith((".ndjson", ".jsonl")) else hint
            kind = sniff(head[:MAX_LINE], True, self._fields, hint) or hint or InputFormat.TEXT
        if kind == InputFormat.CSV:
            self._lines = Lines(universal=True)
            self._csv = _CsvRows(self._input.name, self._fields)
        elif kind == InputFormat.NDJSON:
            self._parse = _ndjson_records(self._fields)
        if head:
            self._lines.feed(head)
        if self._csv is not None:
            while True:
                first = self._lines.taken + 1
                self._csv.push(first, self._lines.take(sys.maxsize))
                if self._csv.header(final=self._ended):
                    break
                await self._read_more(opening=True)
        # The first records already read are looked at before anything is done with any.
        self._take(CHECKED, self._first)
        # A file is read on (a read of it never waits) to judge as many records as a big list
        # would have judged, or all a small one has.
        while len(self._first) < CHECKED and not (self._ended or self._stream or self._damage):
            await self._read_more(opening=False, ahead=True)
            self._take(CHECKED, self._first)
        self._check(self._first, whole=self._ended and len(self._first) < CHECKED)
        return identity

    def _take(self, size: int, records: list[Record]) -> None:
        """Parse the lines read so far into ``records``, up to ``size`` of them."""
        while len(records) < size:
            first = self._lines.taken + 1
            lines = self._lines.take(size - len(records))
            if self._csv is not None:
                self._csv.push(first, lines)
                self._csv.records(records, size, final=self._ended and self._lines.exhausted)
            elif lines:
                self._parse(lines, first - 1, records)
            if not lines:
                return

    async def _read_more(self, opening: bool, ahead: bool = False) -> None:
        """Read on, once the lines so far are all taken. ``ahead``: only to judge the list;
        damage found then is kept, and raised when the calls before it are taken."""
        try:
            data = await self._read(opening)
        except InputError:
            if not ahead:
                raise
            return  # ``_damage`` holds it for the read that is not ahead
        if data:
            self._lines.feed(data)
        else:
            self._lines.end()
            self._ended = True

    async def _read(self, opening: bool) -> bytes:
        try:
            if self._damage is not None:
                raise self._damage
            return await self._input.read()
        except _CORRUPT as exc:
            self._damage = exc
            if opening:
                raise InputError(f"cannot read input {self._input.name}: {_damage(exc)}") from exc
            raise InputError(
                f"the input is damaged after line {self._lines.taken} ({_damage(exc)}); what "
                f"came before it is harvested. {_AFTER_DAMAGE}"
            ) from exc


def _damage(exc: BaseException) -> str:
    """What is wrong with the input, in our words (zlib's quote its internals)."""
    if isinstance(exc, EOFError):
        return "its gzip data ends short: the file was cut off"
    if isinstance(exc, zlib.error):
        return "its gzip data is corrupt"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__

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
and parsed in the event loop a batch at a time (``RecordFeed``): no thread hop per line. The lines
are made records by ``harvester.input.records`` (text, NDJSON) and ``harvester.input.csvrows``.
"""

from __future__ import annotations

import asyncio
import sys
import zlib
from collections.abc import Callable
from typing import Any

from harvester.errors import InputError
from harvester.input.chunks import MAX_LINE, ChunkReader, Lines, is_stream
from harvester.input.csvrows import CsvRows
from harvester.input.formats import ANOTHER_FORMAT, looks_like_id, not_an_id, sniff
from harvester.input.records import InvalidRecord, Record, ndjson_records, text_records
from harvester.settings.values import InputFormat

ID_FIELDS = ("callId", "id")
# A list is refused when more than this share of its first CHECKED records hold no call id.
# A file is read that far (or to its end) before any record is used; a stream only as far as
# it has come, since waiting for more would hold up a pipe's first calls.
CHECKED, NOT_IDS_SHARE = 100, 0.5
# What a damaged (truncated, corrupt) input raises while it is read.
_CORRUPT = (OSError, EOFError, zlib.error)
# What to do then: a repaired file is another file to the ledger.
_AFTER_DAMAGE = (
    "Put the calls after it in a call list of their own and harvest that to another --output, "
    "or repair the file and start over with --fresh"
)


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
        self._parse: Callable[[list[bytes], int, list[Record]], None] = text_records
        self._csv: CsvRows | None = None
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
        bad = [r for r in first if isinstance(r, InvalidRecord) or not looks_like_id(r.key)]
        if len(bad) <= NOT_IDS_SHARE * len(first):
            return
        example = bad[0]
        if isinstance(example, InvalidRecord):
            line, what, hint = example.line, example.reason, ANOTHER_FORMAT
        else:
            line, (what, hint) = example.line, not_an_id(example.key)
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
            self._csv = CsvRows(self._input.name, self._fields)
        elif kind == InputFormat.NDJSON:
            self._parse = ndjson_records(self._fields)
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

"""CSV call lists: rows read from lines that come a chunk at a time, the id column found by the
header, whatever it is separated by."""

from __future__ import annotations

import csv
import logging
from collections import deque
from itertools import count

from harvester.errors import InputError
from harvester.ids import CallRef
from harvester.input.chunks import MAX_LINE
from harvester.input.formats import DELIMITER_NAMES, DELIMITERS
from harvester.input.records import TOO_LONG, InvalidRecord, Record, printable

log = logging.getLogger("harvester")

# Why the csv module (which reads every line end) gives up on a row, in our words.
_UNPARSED = f" (a field over {csv.field_size_limit() // 1024} KiB: a quote left open?)"


class CsvRows:
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
                            printable(rows[delimiter][self.column].strip()),
                        )
                    return
        # Shown as the delimiter that splits it most would read it: the columns it has.
        delimiter = max(DELIMITERS, key=lambda d: len(rows[d]))
        found = ", ".join(printable(c.strip()) for c in rows[delimiter])
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
                value = printable(value)
            out.append(
                CallRef(value, number) if value else InvalidRecord(number, "empty call id cell")
            )

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

    def __iter__(self) -> CsvRows:
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
                self._overlong.append(InvalidRecord(number, TOO_LONG))
            return "\n"
        # Bytes that are not UTF-8 stay themselves (as lone surrogates) until ``printable``
        # escapes them in the id.
        return raw.decode("utf-8", "surrogateescape")

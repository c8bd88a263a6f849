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

import csv
import gzip
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from harvester.errors import InputError

MAX_LINE = 64 * 1024
ID_FIELDS = ("callId", "id")
_GZIP_MAGIC = b"\x1f\x8b"


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
        """Close the file (stdin is left open)."""
        if self._text is not None:
            self._text.detach()
            self._text = None
        if self._raw is not sys.stdin.buffer:
            self._raw.close()

    def __enter__(self) -> CallList:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, spec: str) -> BinaryIO:
        if spec == "-":
            return sys.stdin.buffer
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
        if stream.peek(2)[:2] == _GZIP_MAGIC:
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
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"cannot read input {self.name}: {exc}") from None

    def _sniff(self, stream: Any) -> str:
        """Guess the format from the first line with something on it (stdin, unknown suffix)."""
        try:
            head: bytes = stream.peek(MAX_LINE)[:MAX_LINE]
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
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
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"input is corrupt after line {number}: {exc}") from None
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
    except (OSError, EOFError) as exc:
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
        except (OSError, EOFError) as exc:
            raise InputError(f"input is corrupt after line {reader.line_num}: {exc}") from None
        row_number = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        value = row[column].strip() if column < len(row) else ""
        yield (row_number, value) if value else InvalidRecord(row_number, "empty call id cell")

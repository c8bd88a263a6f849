"""A call list's lines made records: an id with the line it came from, or an ``InvalidRecord``
for a line that names no call. Plain text and NDJSON lines are parsed here (CSV rows in
``harvester.input.csvrows``); an id that is not printable UTF-8 is kept escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from harvester.ids import CallRef
from harvester.input.chunks import MAX_LINE

TOO_LONG = f"line longer than {MAX_LINE} bytes"
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A line of the input that names no call; ``line`` counts from 1."""

    line: int
    reason: str


# An id with the input line it came from, or a line that names no call.
Record = CallRef | InvalidRecord


def text_records(lines: list[bytes], number: int, out: list[Record]) -> None:
    """Records of ``lines`` into ``out``; ``number`` is that of the line before them."""
    # Lines that are all printable ASCII once their ends are stripped (as a list of ids is),
    # told so in one pass over the batch: checking line by line would cost a quarter more.
    text_of = bytes.decode if _plain(lines) else _text_of
    for raw in lines:
        number += 1
        if len(raw) > MAX_LINE:
            out.append(InvalidRecord(number, TOO_LONG))
            continue
        line = raw.strip()
        if line and not line.startswith(b"#"):
            out.append(CallRef(text_of(line), number))


def _plain(lines: list[bytes]) -> bool:
    """True when every line is printable ASCII, but a CR at its end."""
    joined = b"\n".join(lines)
    if not joined.isascii() or joined.translate(None, _PRINTABLE_ASCII).strip(b"\r\n"):
        return False
    crs = joined.count(b"\r")
    return crs == 0 or crs == joined.count(b"\r\n") + joined.endswith(b"\r")


def _text_of(line: bytes) -> str:
    """A stripped line as text, escaped (``printable``) if it is not printable UTF-8."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return printable(line.decode("utf-8", "surrogateescape"))
    return text if text.isprintable() else printable(text)


def ndjson_records(fields: tuple[str, ...]) -> Callable[[list[bytes], int, list[Record]], None]:
    """A parser of NDJSON lines whose id is in the first of ``fields`` an object has."""

    def parse(lines: list[bytes], number: int, out: list[Record]) -> None:
        for raw in lines:
            number += 1
            if len(raw) > MAX_LINE:
                out.append(InvalidRecord(number, TOO_LONG))
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


def printable(text: str) -> str:
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
            return CallRef(text if text.isprintable() else printable(text), number)
        shown = orjson.dumps(value)[:40].decode(errors="replace")
        return InvalidRecord(number, f"{key} is not a call id string: {shown}")
    return InvalidRecord(number, f"no {' or '.join(fields)} field")

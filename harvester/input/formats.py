"""Telling a call list's format from its first line, and saying what a list that is no call
list holds instead (binary bytes, a TSV, a CSV with no header, words)."""

from __future__ import annotations

import re

from harvester.input.chunks import BOM
from harvester.settings.values import InputFormat

# What separates a CSV's columns: a comma, or else one of the others when it is what makes the
# header name the id column (a spreadsheet of a locale with decimal commas writes semicolons).
DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "'|'"}
# An escape that ``harvester.input.records.printable`` wrote: the id held bytes that are not
# printable text.
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[tnr])")


def looks_like_id(text: str) -> bool:
    """An attempt at a call id, however bad: ``c-`` and one token (a row of a CSV read as
    text holds a separator too; one of binary bytes, ``printable``'s escapes)."""
    return text[:2].lower() == "c-" and not any(mark in text for mark in ',;|\t "{}\\')


ANOTHER_FORMAT = (
    "Is it another format? Say which with --input-format text|csv|ndjson, and the id's column "
    "or field with --id-column"
)


def not_an_id(text: str) -> tuple[str, str]:
    """What a record that is not an attempt at a call id holds, and what to do about it."""
    shown = f"'{text[:60]}'" + ("..." if len(text) > 60 else "")
    escapes = {found[0] for found in _ESCAPE.findall(text)}
    if escapes - {"t"}:
        return (
            f"binary bytes or control characters, shown escaped: {shown}",
            "A call list is UTF-8 text (one id a line, a CSV or NDJSON), gzip-compressed or "
            "not: is this one at all? Save UTF-16 text as UTF-8; unpack other archives first",
        )
    if escapes:
        return (
            shown,
            "This looks like a tab-separated file: give it a header row that names the callId "
            "column (or name yours with --id-column), or put one call id a line",
        )
    for delimiter in (",", ";", "|"):
        if delimiter in text:
            return (
                shown,
                f"This looks like a CSV separated by {DELIMITER_NAMES[delimiter]} without a "
                "header row that names the callId column: give it one, or name yours with "
                "--id-column and say --input-format csv",
            )
    if any(c.isspace() for c in text):
        return f"{shown} holds spaces", ANOTHER_FORMAT
    return f"{shown}: a call id is c- and up to 64 letters, digits or hyphens", ANOTHER_FORMAT


def sniff(
    head: bytes, whole: bool, fields: tuple[str, ...], hint: InputFormat | None = None
) -> InputFormat | None:
    """The format the first line with something on it says; None if there is none yet (the
    last line of ``head`` counts only if ``whole``). A first line that names an id column is a
    CSV header (with any of ``DELIMITERS``); several cells make a CSV where the name says so
    too."""
    lines = head.removeprefix(BOM).splitlines(keepends=True)
    if lines and not whole and not lines[-1].endswith((b"\n", b"\r")):
        lines.pop()
    names = {field.lower() for field in fields}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if line.startswith(b"{"):
            return InputFormat.NDJSON
        text = line.decode("utf-8", "replace")
        for delimiter in DELIMITERS:
            cells = [c.strip().strip('"').lower() for c in text.split(delimiter)]
            if any(c in names for c in cells) or (hint == InputFormat.CSV and len(cells) > 1):
                return InputFormat.CSV
        return InputFormat.TEXT
    return None

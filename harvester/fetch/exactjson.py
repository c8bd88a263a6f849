"""JSON read so that what harvester writes back says what the API sent, or a clear refusal.

orjson reads an integer beyond 64 bits, or a number with more digits than a double holds, as a
double; it reads a number too small for a double as 0, and keeps only the last of a key given
twice in one object. Written back, such a document says something else. ``read_array`` says,
element by element, what it cannot vouch for:

- the usual case costs one more ``orjson.dumps``: an answer written as orjson writes JSON
  (compact, as the API and the simulator send it) that reads back to the same bytes was read
  exactly;
- any other answer is read again by the standard library, which hands over the text of every
  number and every key of every object as the answer wrote them, to find what orjson changed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from harvester.errors import FailureCode

# Integers orjson reads exactly.
_INT_RANGE = range(-(2**63), 2**64)
# Longer digit strings are not made into ints at all (Python refuses past 4,300 digits).
_LONGEST_INT = 4000
# Of a number or key, this much is quoted in a message.
_QUOTED = 40


@dataclass(frozen=True, slots=True)
class Inexact:
    """Why an element cannot be written back as it was sent: ``code`` (``inexact-number``,
    ``duplicate-key``, or ``malformed-answer`` for what cannot be written as JSON at all) and a
    short ``detail``."""

    code: str
    detail: str


def read_array(body: bytes) -> tuple[Any, list[Inexact | None] | None]:
    """``body`` read as JSON: the document (an array, when all is well), and, when some of its
    elements would not be written back as they were sent, one entry per element saying why
    (None for those that would). Raises ``ValueError`` when ``body`` is not JSON."""
    if body.startswith(b"\xef\xbb\xbf"):  # a BOM: not JSON's, but nothing of the document
        body = body[3:]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None  # the standard library may read it (1e400): said below what is wrong
    else:
        if not isinstance(document, list):
            return document, None
        try:
            written = orjson.dumps(document)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes: said below
            written = b""
        if written == body or written == body.strip():
            return document, None
    try:
        elements, verdicts = _audited(body)
    except RecursionError as exc:
        raise ValueError("nested too deep") from exc
    if document is None:
        if not any(verdicts):
            raise ValueError("not JSON that orjson reads")
        document = elements
    return document, verdicts if any(verdicts) else None


def _audited(body: bytes) -> tuple[list[Any], list[Inexact | None]]:
    """The elements of the array ``body``, read by the standard library, and what would change
    in each if written back after orjson's reading."""
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError("not UTF-8") from exc
    found: list[Inexact] = []
    decoder = _decoder(found)
    if not text.startswith("["):
        decoder.decode(text)
        return [], []  # not an array: the caller refuses it
    elements: list[Any] = []
    verdicts: list[Inexact | None] = []
    at = _skip(text, 1)
    if text.startswith("]", at):
        at += 1
    else:
        while True:
            found.clear()
            element, at = decoder.raw_decode(text, at)
            elements.append(element)
            verdicts.append(found[0] if found else _unwritable(element))
            at = _skip(text, at)
            if text.startswith(",", at):
                at = _skip(text, at + 1)
                continue
            if not text.startswith("]", at):
                raise ValueError("not a JSON array")
            at += 1
            break
    if at != len(text):
        raise ValueError("more after the JSON array")
    return elements, verdicts


def _decoder(found: list[Inexact]) -> json.JSONDecoder:
    """A decoder that reads as the standard library does and notes in ``found`` every number
    and key that orjson's reading would change."""

    def whole(text: str) -> int:
        if len(text) > _LONGEST_INT:
            found.append(
                Inexact(FailureCode.INEXACT_NUMBER, f"holds an integer of {len(text)} digits")
            )
            return 0
        value = int(text)
        if value not in _INT_RANGE:
            found.append(
                Inexact(FailureCode.INEXACT_NUMBER, f"holds {_quote(text)}, beyond 64 bits")
            )
        return value

    def real(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or Decimal(repr(value)) != Decimal(text):
            found.append(
                Inexact(
                    FailureCode.INEXACT_NUMBER, f"holds {_quote(text)}, more than a double holds"
                )
            )
        return value

    def constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        document = dict(items)
        if len(document) != len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    found.append(
                        Inexact(FailureCode.DUPLICATE_KEY, f"gives the key {_quote(key)} twice")
                    )
                    break
                seen.add(key)
        return document

    return json.JSONDecoder(
        parse_int=whole, parse_float=real, parse_constant=constant, object_pairs_hook=pairs
    )


def _unwritable(element: Any) -> Inexact | None:
    """What orjson cannot write of what the standard library read (a lone surrogate, nesting
    too deep), if anything."""
    try:
        orjson.dumps(element)
    except orjson.JSONEncodeError:
        return Inexact(
            FailureCode.MALFORMED_ANSWER,
            "cannot be written back as JSON (a lone surrogate, or nesting)",
        )
    return None


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def _quote(text: str) -> str:
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= _QUOTED else text[: _QUOTED - 3] + "..."

"""Reading the API's answers: a 200's events or records, an error answer's code and message,
with whatever the server sent clipped (``harvester.logs.clip``) before it reaches a log line or
the failures file.
"""

from __future__ import annotations

import re
from itertools import repeat
from typing import Any, NamedTuple, NoReturn

import aiohttp
import orjson
from yarl import URL

from harvester.errors import CallFailed, FailureCode, TransientError
from harvester.fetch.exactjson import Inexact, read_array
from harvester.logs import clip

Event = dict[str, Any]

# Of an error answer, this much is read: enough for any error document, never a flood.
ERROR_BODY_LIMIT = 64 * 1024
# What is copied from an answer into the failures file and the log, at most.
_SAFE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ListPage(NamedTuple):
    """A page of the call list: its records, the next page's URL, and which records would not be
    written back as they were sent (None when all would; see ``harvester.fetch.exactjson``)."""

    records: list[Event]
    next_url: URL | None
    inexact: list[Inexact | None] | None = None


class Answer(NamedTuple):
    """One 200 answer: its events or records, the next page's URL, its body's size, and which
    of its items would not be written back as sent."""

    items: list[Event]
    next_url: URL | None
    size: int
    inexact: list[Inexact | None] | None


def parse_events(
    body: bytes, response: aiohttp.ClientResponse
) -> tuple[list[Event], list[Inexact | None] | None]:
    try:
        events, inexact = read_array(body)
    except ValueError as exc:
        content_type = clip(response.content_type, 60)
        raise TransientError(
            200, FailureCode.INVALID_BODY, f"answer is not JSON ({content_type}, {len(body)} bytes)"
        ) from exc
    # map over repeat: the check of every element runs in C, not one generator step each.
    if not isinstance(events, list) or not all(map(isinstance, events, repeat(dict))):
        raise TransientError(
            200, FailureCode.INVALID_BODY, "answer is not a JSON array of event objects"
        )
    return events, inexact


def refuse_inexact(inexact: list[Inexact | None], before: int) -> NoReturn:
    """Fail the call: an event of an answer (after ``before`` events of earlier pages) would
    not be written back as the API sent it."""
    number, wrong = next((n, v) for n, v in enumerate(inexact, before + 1) if v)
    raise CallFailed(
        200,
        wrong.code,
        f"event {number} {wrong.detail}: it cannot be written as the API sent it, so the call "
        "is listed as failed rather than written changed",
    )


def error_fields(status: int, body: bytes, response: aiohttp.ClientResponse) -> tuple[str, str]:
    """Catapult's error ``code`` and ``message``; ours when the body is not Catapult's.

    Both are clipped: a code is a short token or ``http-<status>``, a message at most
    ``harvester.logs.MAX_MESSAGE`` printable characters, whatever the server sent.
    """
    reason = clip(response.reason or "error")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        code = document.get("code") or document.get("category")
        message = document.get("message") or document.get("category") or reason
        if isinstance(code, str) and isinstance(message, str):
            if not _SAFE_CODE.fullmatch(code):
                code = f"http-{status}"
            return code, clip(message)
    return f"http-{status}", f"{reason} ({clip(response.content_type, 60)}, {len(body)} bytes)"


async def read_error_body(response: aiohttp.ClientResponse) -> bytes:
    """At most ``ERROR_BODY_LIMIT`` bytes of an error answer: its code and message, no more."""
    chunks = []
    size = 0
    while size < ERROR_BODY_LIMIT:
        chunk = await response.content.read(ERROR_BODY_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)

"""The lines harvester writes: events (as the API sent them, plus ``callId``) and failures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


def event_lines(call_id: str, events: list[dict[str, Any]]) -> bytes:
    """The NDJSON lines of one call: each event as the API sent it, plus ``callId``."""
    # The callId member is spliced in front of each event's own serialisation: the same
    # bytes as serialising {"callId": ..., **event}, without building a dict per event.
    head = b'{"callId":' + orjson.dumps(call_id)
    lines = []
    for event in events:
        if "callId" in event:
            # The call asked for wins over a callId of the answer's own: an event is filed
            # under the call it was fetched for, never another (or null).
            rest = {key: value for key, value in event.items() if key != "callId"}
            lines.append(orjson.dumps({"callId": call_id, **rest}))
            continue
        body = orjson.dumps(event)
        lines.append(head + (b"," + body[1:] if len(body) > 2 else b"}"))
    lines.append(b"")
    return b"\n".join(lines)


def failure_line(
    call_id: str | None,
    status: int | None,
    code: str,
    message: str,
    attempts: int,
    input_line: int | None = None,
) -> bytes:
    """One line of the failures file; ``input_line`` for a line of the call list that names no
    call (its ledger key, kept as such rather than read back out of the message)."""
    record: dict[str, object] = {
        "callId": call_id,
        "status": status,
        "code": code,
        "message": message,
        "attempts": attempts,
    }
    if call_id is None and input_line is not None:
        record["inputLine"] = input_line
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """A call (or an input line naming none) that is not harvested, and why.

    ``key`` is its ledger key, ``line`` its input line, ``listed`` its call-list record (a
    nightly run keeping them), ``status`` the HTTP status or None when no answer came, ``code``
    a ``harvester.errors.FailureCode`` or the API's own.
    """

    key: str
    line: int
    call_id: str | None
    status: int | None
    code: str
    message: str
    attempts: int = 0
    listed: bytes = b""

    def __post_init__(self) -> None:
        # A ``FailureCode`` is a str, but not one orjson takes as the key of a counter.
        object.__setattr__(self, "code", str(self.code))

    def as_line(self) -> bytes:
        """Its line in the failures file."""
        return failure_line(
            self.call_id, self.status, self.code, self.message, self.attempts, self.line
        )

"""The lines harvester writes: events (as the API sent them, plus ``callId``) and failures."""

from __future__ import annotations

from typing import Any

import orjson


def event_lines(call_id: str, events: list[dict[str, Any]]) -> bytes:
    """The NDJSON lines of one call: each event as the API sent it, plus ``callId``."""
    return b"".join(
        orjson.dumps({"callId": call_id, **event}, option=orjson.OPT_APPEND_NEWLINE)
        for event in events
    )


def failure_line(
    call_id: str | None, status: int | None, code: str, message: str, attempts: int
) -> bytes:
    """One line of the failures file."""
    return orjson.dumps(
        {
            "callId": call_id,
            "status": status,
            "code": code,
            "message": message,
            "attempts": attempts,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )

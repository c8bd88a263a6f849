"""Log lines: plain text for people, or JSON lines (``--log-format json``) for log pipelines.

A JSON line carries ``time`` (UTC, ISO 8601), ``level``, ``event`` (a stable name such as
``progress``, ``retry``, ``call-failed``, ``summary``), ``message`` and the event's fields.
No credential is ever passed to a log call: settings print secrets as ``***``, errors are said in
our own words; and whatever a line holds, the credentials of any URL in it are redacted.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from harvester.credentials import redact_urls_in

log = logging.getLogger("harvester")


def event(level: int, name: str, message: str, *args: object, **fields: Any) -> None:
    """Log ``message`` as event ``name`` with ``fields`` (kept as fields in JSON lines)."""
    if log.isEnabledFor(level):
        log.log(level, message, *args, extra={"event": name, "fields": fields})


class JsonLines(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "message"),
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return redact_urls_in(orjson.dumps(line, default=str).decode())


class Text(logging.Formatter):
    """``harvester: message`` for people."""

    def __init__(self) -> None:
        super().__init__("harvester: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # Whatever a line holds (a traceback, an error nobody foresaw), no URL's credentials.
        return redact_urls_in(super().format(record))


def configure(log_format: str = "text", verbose: bool = False) -> None:
    """Send harvester's log to stderr in ``log_format`` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(Text())
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    # aiohttp's own loggers stay quiet unless they have something serious to say.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)

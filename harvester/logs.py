"""Log lines: plain text for people, or JSON lines (``--log-format json``) for log pipelines.

A JSON line carries ``time`` (UTC, ISO 8601), ``level``, ``event`` (a stable name such as
``progress``, ``retry``, ``call-failed``, ``summary``), ``message`` and the event's fields. A
text line starts with the local time (ISO 8601, with its UTC offset) when stderr is not a
terminal: a file that cron or a redirection appends to says when each line was written; a person
at a terminal sees the time anyway, and systemd's journal stamps each line itself.
No credential is ever passed to a log call: settings print secrets as ``***``, errors are said in
our own words; and whatever a line holds, the credentials of any URL in it are redacted.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from harvester import exits
from harvester.credentials import redact_urls_in

log = logging.getLogger("harvester")

# Exits that are what was asked for or what went well: a summary said at INFO. A stop asked
# for (the deadline, a signal) is not a failure; the next run goes on.
_FINE_EXITS = (exits.OK, exits.DEADLINE, exits.SIGINT, exits.SIGTERM)


def event(level: int, name: str, message: str, *args: object, **fields: Any) -> None:
    """Log ``message`` as event ``name`` with ``fields`` (kept as fields in JSON lines)."""
    if log.isEnabledFor(level):
        log.log(level, message, *args, extra={"event": name, "fields": fields})


def per_call(level: int, name: str, message: str, *args: object, **fields: Any) -> None:
    """A line about one call (a retry, a failure): said only with ``--verbose`` (the log at
    DEBUG: a run may have millions), and then at ``level``, what it means, so that a log
    pipeline sees a failed call as a warning."""
    if log.isEnabledFor(logging.DEBUG):
        log.log(level, message, *args, extra={"event": name, "fields": fields})


def summary_level(exit_code: int) -> int:
    """The level of a summary for ``exit_code``, so that a log pipeline alerting on warnings
    and errors sees a run that failed: INFO for 0 and for a stop asked for (5, 130,
    143); WARNING for 1 (finished, with more failed calls than allowed: the failures file says
    which); ERROR for the rest (the run could not go on, or was refused)."""
    if exit_code in _FINE_EXITS:
        return logging.INFO
    return logging.WARNING if exit_code == exits.FAILURES else logging.ERROR


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``1 request``, ``2 requests``: ``number`` and ``noun``, plural (``plural``, else the noun
    and an s) unless the number is one."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


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
    """``harvester: message`` for people; with ``stamped``, after the local time
    (``2026-12-01T03:04:05+01:00 harvester: message``)."""

    def __init__(self, stamped: bool = False) -> None:
        super().__init__("harvester: %(message)s")
        self._stamped = stamped

    def format(self, record: logging.LogRecord) -> str:
        # Whatever a line holds (a traceback, an error nobody foresaw), no URL's credentials.
        line = redact_urls_in(super().format(record))
        if not self._stamped:
            return line
        moment = datetime.fromtimestamp(record.created).astimezone()
        return f"{moment.isoformat(timespec='seconds')} {line}"


class Held(logging.Handler):
    """``--quiet``: the warnings, the errors and the summary line held back, to be said only
    if the run fails (``say_held``); what is held is bounded, however long the run (the first
    and the last of them, and how many were left out between)."""

    FIRST = 50
    LAST = 200

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target
        self._first: list[logging.LogRecord] = []
        self._last: deque[logging.LogRecord] = deque(maxlen=self.LAST)
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        # A stopped run's summary is said at INFO (a stop asked for is no failure), and its cron
        # mail needs it all the same.
        return record.levelno >= logging.WARNING or getattr(record, "event", "") == "summary"

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._first) < self.FIRST:
            self._first.append(record)
            return
        if len(self._last) == self._last.maxlen:
            self._left_out += 1
        self._last.append(record)

    def say_held(self) -> None:
        """Say what was held back, in order, and hold nothing more."""
        records, self._first, self._last = [*self._first, *self._last], [], deque()
        for number, record in enumerate(records):
            if number == self.FIRST and self._left_out:
                self.target.handle(_left_out(self._left_out, record))
            self.target.handle(record)
        self._left_out = 0


def _left_out(count: int, after: logging.LogRecord) -> logging.LogRecord:
    record = logging.LogRecord(
        log.name, logging.WARNING, __file__, 0, "(%d more warnings not shown)", (count,), None
    )
    record.created = after.created
    record.event = "left-out"
    record.fields = {"count": count}
    return record


def configure(log_format: str = "text", verbose: bool = False, quiet: bool = False) -> None:
    """Send harvester's log to stderr in ``log_format`` (text or json); with ``quiet``, hold
    its warnings, errors and summary back until ``release_held`` (of a run that failed)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        stamped = not is_terminal(sys.stderr) and not _is_journal(sys.stderr)
        handler.setFormatter(Text(stamped=stamped))
    log.handlers[:] = [Held(handler) if quiet else handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    # aiohttp's own loggers stay quiet unless they have something serious to say.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is a terminal (a closed or odd stream is not one)."""
    try:
        return stream.isatty()
    except (ValueError, OSError):
        return False


def _is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is systemd's journal, as ``JOURNAL_STREAM`` (its device and inode)
    says to the service whose stderr it is."""
    try:
        device, inode = (int(part) for part in os.environ["JOURNAL_STREAM"].split(":"))
        found = os.fstat(stream.fileno())
    except (KeyError, ValueError, OSError):  # not under systemd; not a stream with a file
        return False
    return (found.st_dev, found.st_ino) == (device, inode)


def release_held() -> None:
    """Say what ``--quiet`` held back (a run that did not exit 0)."""
    for handler in log.handlers:
        if isinstance(handler, Held):
            handler.say_held()


# The most of a server's or a library's text a log line or the failures file holds.
MAX_MESSAGE = 300


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` for a log line or the failures file: printable, at most ``limit`` characters."""
    text = text[: limit + 1]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""A 429's word on when to ask again: its ``X-RateLimit-Reset`` or ``Retry-After`` header read
into seconds to wait, what it said, and the pool's pause it makes, for the log."""

from __future__ import annotations

import email.utils
import logging
import math
from datetime import UTC, datetime
from typing import Any

from harvester.clock import Clock
from harvester.logs import clip, event

# A pool's pause longer than this many seconds is logged.
PAUSE_TOLD = 5.0
# A reset header further away than this is taken as a clock or unit mistake and capped.
MAX_RATE_LIMIT_WAIT = 600.0
# X-RateLimit-Reset from this on is epoch milliseconds (1973 on); from the next on, below it,
# epoch seconds (2001 to 5138); below both, seconds from now.
_EPOCH_MILLISECONDS_FROM = 100_000_000_000
_EPOCH_SECONDS_FROM = 1_000_000_000


def rate_limit_delay(headers: Any, now: float, sent: float | None = None) -> float | None:
    """Seconds to wait after a 429, from ``X-RateLimit-Reset`` (epoch milliseconds; epoch
    seconds; or, below ``_EPOCH_SECONDS_FROM``, seconds from now) or else ``Retry-After``
    (seconds or an HTTP date), at most ``MAX_RATE_LIMIT_WAIT``.

    Zero or less (how long ago) when ``X-RateLimit-Reset`` names a moment that passed while
    the request and its answer were on their way: since ``sent``, when the request left (wall
    clock), give or take as long again for the server's clock to be behind ours. A token
    bucket's next token, a few milliseconds after the server refused, is often past when its
    answer arrives over a real network; it is still the limit's word, the reset has come, and
    the moment it named tells this window from the next.

    None when neither names such a moment: absent, unreadable, zero, or past since longer ago
    (a server clock well behind ours). Such a 429 backs off like a failure: it never means
    "send now".
    """
    reset = _reset_seconds(headers.get("X-RateLimit-Reset"), now)
    for delay in (reset, _retry_after_seconds(headers.get("Retry-After"), now)):
        if delay is not None and delay > 0:
            return min(delay, MAX_RATE_LIMIT_WAIT)
    if reset is not None and sent is not None and 2 * (sent - now) <= reset <= 0 < now - sent:
        return reset  # reached on the way
    return None


def _reset_seconds(value: object, now: float) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if number >= _EPOCH_MILLISECONDS_FROM:
        return number / 1000 - now
    if number >= _EPOCH_SECONDS_FROM:
        return number - now
    # Seconds from now, as the IETF's RateLimit-Reset counts them: never a moment past.
    return number if number > 0 else None


def _retry_after_seconds(value: object, now: float) -> float | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not str.isdigit alone: "²" is a digit to it
        return float(value)
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        return when.timestamp() - now
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def reset_said(headers: Any, delay: float | None) -> str:
    """What a 429's headers said of its reset, for the log."""
    said = [
        f"{name}: {clip(headers[name], 40)}"
        for name in ("X-RateLimit-Reset", "Retry-After")
        if isinstance(headers.get(name), str)
    ]
    text = ", ".join(said) or "no reset header"
    if delay is not None and delay >= MAX_RATE_LIMIT_WAIT:
        text += f"; waits are capped at {MAX_RATE_LIMIT_WAIT:.0f} s"
    return text


def tell_pause(until_wall: float, seconds: float, cause: str) -> None:
    """Log that every request waits ``seconds``, until ``until_wall`` (epoch seconds), and
    what asked for it."""
    until = datetime.fromtimestamp(until_wall, UTC)
    event(
        logging.WARNING,
        "paused",
        "every request waits until %s UTC (%.0f s from now): %s",
        until.strftime("%H:%M:%S"),
        seconds,
        cause,
        until=until.isoformat(timespec="seconds"),
        seconds=round(seconds, 1),
        cause=cause,
    )


class PauseTeller:
    """Logs each pause of the pool longer than ``PAUSE_TOLD`` seconds (``tell_pause``), but not
    one ending within ``PAUSE_TOLD`` of the last told: a pause made longer is no news."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._told_until = -math.inf

    def tell(self, when: float, cause: str) -> None:
        """The pool waits until ``when`` (the clock's monotonic seconds), for ``cause``."""
        now = self._clock.monotonic()
        if when - now < PAUSE_TOLD or when < self._told_until + PAUSE_TOLD:
            return
        self._told_until = when
        tell_pause(self._clock.time() + when - now, when - now, cause)

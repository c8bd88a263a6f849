"""Admission of requests: one ``RateLimiter`` shared by every worker.

It paces requests evenly at ``rate`` per second (0: no pacing) and holds the whole pool when
the API says to wait (a 429's reset time): every request acquires a slot first, so a pause
announced by one worker's 429 stops all of them.
"""

from __future__ import annotations

import random

from harvester.clock import Clock

# Waiters released together by the end of a pause are spread over this many seconds, so the
# pool does not hit the API in one burst at the reset instant.
PAUSE_SPREAD = 0.05


class RateLimiter:
    """Smooth pacing plus pool-wide pauses, on an injectable clock."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next_slot = 0.0
        self._paused_until = 0.0

    async def acquire(self) -> None:
        """Wait for this request's turn."""
        while True:
            now = self._clock.monotonic()
            if self._interval:
                slot = max(now, self._next_slot, self._paused_until)
                self._next_slot = slot + self._interval
            elif self._paused_until > now:
                slot = self._paused_until + random.uniform(0, PAUSE_SPREAD)
            else:
                return
            if slot <= now:
                return
            await self._clock.sleep(slot - now)
            # A pause announced while we slept moves our turn past it.
            if self._paused_until <= self._clock.monotonic():
                return

    def pause_until(self, when: float) -> None:
        """Admit nothing before ``when`` (monotonic clock seconds)."""
        if when > self._paused_until:
            self._paused_until = when

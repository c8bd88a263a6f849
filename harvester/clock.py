"""Time, injectable: everything that waits or reads the time takes a ``Clock``.

Tests pass a clock whose ``sleep`` advances time instantly, so backoff, rate limits, the grace
period and the commit interval are exercised in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Clock(Protocol):
    """Wall time (for the API's epoch reset headers), monotonic time, and waiting."""

    def time(self) -> float:
        """Seconds since the UNIX epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Wait ``seconds`` (from the call, whenever the waiting begins)."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """``asyncio.timeout``, in this clock's seconds: the block is cancelled after
        ``seconds`` and ``TimeoutError`` raised."""
        ...


class SystemClock:
    """The real clock."""

    # The C functions themselves: read on every request, with no Python frame around them.
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


async def sleep_unless(clock: Clock, seconds: float, event: asyncio.Event | None) -> bool:
    """Sleep ``seconds`` on ``clock``, but wake as soon as ``event`` is set; True when the whole
    sleep was slept."""
    if event is None:
        await clock.sleep(seconds)
        return True
    if event.is_set():
        return False
    sleeping = asyncio.ensure_future(clock.sleep(seconds))
    waking = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([sleeping, waking], return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeping.cancel()
        waking.cancel()
    return not event.is_set()

"""Time, injectable: everything that waits or reads the time takes a ``Clock``.

Tests pass a clock whose ``sleep`` advances time instantly, so backoff, rate limits and the
grace period are exercised in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
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

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """``asyncio.timeout``, in this clock's seconds: the block is cancelled after
        ``seconds`` and ``TimeoutError`` raised."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


@contextlib.asynccontextmanager
async def sleep_timeout(clock: Clock, seconds: float) -> AsyncIterator[None]:
    """``Clock.timeout`` for a clock that has only ``sleep``: an alarm task sleeps ``seconds``
    on it, then cancels the block (as ``asyncio.timeout`` does, and with its ``uncancel``)."""
    task = asyncio.current_task()
    assert task is not None
    expired = False

    async def alarm() -> None:
        nonlocal expired
        await clock.sleep(seconds)
        expired = True
        task.cancel()

    alarm_task = asyncio.create_task(alarm())
    try:
        yield
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:
            raise TimeoutError from None
        raise
    finally:
        alarm_task.cancel()


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

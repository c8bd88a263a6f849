"""Time, injectable: everything that waits or reads the time takes a ``Clock``.

Tests pass a clock whose ``sleep`` advances time instantly, so backoff and rate-limit
behaviour is exercised in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time (for the API's epoch reset headers), monotonic time, and sleeping."""

    def time(self) -> float:
        """Seconds since the UNIX epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

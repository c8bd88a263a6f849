"""Where results go: NDJSON files written in batches.

Workers hand over whole calls (all of a call's lines at once), so a call's events are contiguous
in the file. Lines collect in memory and go to disk in one aiofiles write (one thread hop) per
batch: when the buffer passes ``FLUSH_BYTES``, when ``FLUSH_SECONDS`` have passed since the last
write (so a slow run still shows its progress on disk), and at close.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.threadpool.binary
import orjson

from harvester.clock import Clock
from harvester.errors import OutputError

FLUSH_BYTES = 256 * 1024
FLUSH_SECONDS = 1.0


class NdjsonSink:
    """An NDJSON file written in batches. Use as an async context manager."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self._clock = clock
        self._buffer = bytearray()
        self._file: aiofiles.threadpool.binary.AsyncBufferedIOBase | None = None
        self._lock = asyncio.Lock()
        self._last_flush = 0.0

    async def open(self) -> None:
        """Create the file (and its folder), replacing an earlier one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = await aiofiles.open(self.path, "wb")
        except OSError as exc:
            raise OutputError(f"cannot create {self.path}: {exc.strerror}") from None
        self._last_flush = self._clock.monotonic()

    async def __aenter__(self) -> NdjsonSink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def add(self, lines: bytes) -> None:
        """Queue ``lines`` (whole lines, newline-terminated) for writing."""
        self._buffer += lines
        if (
            len(self._buffer) >= FLUSH_BYTES
            or self._clock.monotonic() - self._last_flush >= FLUSH_SECONDS
        ):
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered. Batches reach the file in the order they were added."""
        async with self._lock:
            if not self._buffer or self._file is None:
                return
            batch, self._buffer = self._buffer, bytearray()
            self._last_flush = self._clock.monotonic()
            try:
                await self._file.write(batch)
                await self._file.flush()
            except OSError as exc:
                raise OutputError(
                    f"cannot write {self.path}: {exc.strerror}. "
                    "Free some space or fix the permissions, then run again"
                ) from None

    async def close(self) -> None:
        """Write what is left and close the file."""
        if self._file is None:
            return
        try:
            await self.flush()
        finally:
            file, self._file = self._file, None
            try:
                await file.close()
            except OSError as exc:
                raise OutputError(f"cannot close {self.path}: {exc.strerror}") from None


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

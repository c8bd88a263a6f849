"""The run: call list -> bounded queue -> a fixed pool of workers -> client -> sinks.

The producer reads the call list in batches off the event loop (one thread hop per batch),
drops duplicates, sends malformed records straight to the failures file, and closes the
queue with one ``None`` per worker; that is what ends the workers. A ``FatalApiError`` in
any worker cancels the whole task group: no new requests go out after it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator

from harvester.client import CallEventsClient
from harvester.clock import Clock, SystemClock
from harvester.config import Settings
from harvester.errors import CallFailed, FatalApiError, TransientError
from harvester.ids import is_call_id
from harvester.limiter import RateLimiter
from harvester.retry import RetryingFetcher
from harvester.sink import NdjsonSink, event_lines, failure_line
from harvester.source import CallList, InvalidRecord, Record
from harvester.stats import RunStats

log = logging.getLogger("harvester")

# Records read per thread hop; stdin gets small batches so a slow pipe never starves workers.
FILE_BATCH = 1024
# Calls in a row that fail after all retries, none answered, before the run stops as an outage.
OUTAGE_CALLS = 20
STDIN_BATCH = 32


async def harvest(
    settings: Settings,
    *,
    stats: RunStats | None = None,
    clock: Clock | None = None,
) -> RunStats:
    """Harvest every call of ``settings.input`` into ``settings.output``.

    Returns the run's counters. Raises ``InputError`` before any request when the call list
    cannot be opened, ``FatalApiError`` when the API refuses the credentials (what was
    harvested until then is written), ``OutputError`` when a file cannot be written.
    """
    stats = stats if stats is not None else RunStats()
    clock = clock if clock is not None else SystemClock()
    assert settings.input is not None and settings.output is not None
    with CallList(settings.input) as calls:
        limiter = RateLimiter(settings.rate, clock)
        async with (
            NdjsonSink(settings.output, clock) as events_sink,
            NdjsonSink(settings.failures_path, clock) as failures_sink,
            CallEventsClient(settings, limiter, stats, clock) as client,
        ):
            run = _Run(settings, stats, RetryingFetcher(client, settings, stats, clock))
            try:
                await run.execute(calls, events_sink, failures_sink)
            except* FatalApiError as group:
                raise group.exceptions[0] from None
    return stats


class _Run:
    def __init__(self, settings: Settings, stats: RunStats, fetcher: RetryingFetcher) -> None:
        self._settings = settings
        self._stats = stats
        self._fetcher = fetcher
        # Calls in a row that ended in transient failures, with no answer from the API between.
        self._unanswered = 0
        self._outage_after = max(OUTAGE_CALLS, 2 * settings.concurrency)
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=2 * settings.concurrency)

    async def execute(self, calls: CallList, events: NdjsonSink, failures: NdjsonSink) -> None:
        async with asyncio.TaskGroup() as group:
            batch = STDIN_BATCH if calls.name == "stdin" else FILE_BATCH
            group.create_task(self._produce(iter(calls), batch, failures))
            for _ in range(self._settings.concurrency):
                group.create_task(self._work(events, failures))

    async def _produce(self, records: Iterator[Record], size: int, failures: NdjsonSink) -> None:
        stats = self._stats
        seen: set[str] = set()
        while batch := await asyncio.to_thread(_take, records, size):
            for record in batch:
                if isinstance(record, InvalidRecord):
                    stats.calls += 1
                    stats.invalid += 1
                    await self._fail(
                        failures, None, None, "invalid-input", record.reason, 0, line=record.line
                    )
                    continue
                if record in seen:
                    stats.duplicates += 1
                    continue
                seen.add(record)
                stats.calls += 1
                if not is_call_id(record):
                    stats.invalid += 1
                    await self._fail(
                        failures,
                        record,
                        None,
                        "invalid-call-id",
                        "not a call id (c- and up to 64 letters, digits or hyphens); not sent",
                        0,
                    )
                    continue
                await self._queue.put(record)
        for _ in range(self._settings.concurrency):
            await self._queue.put(None)

    async def _work(self, events: NdjsonSink, failures: NdjsonSink) -> None:
        stats = self._stats
        while (call_id := await self._queue.get()) is not None:
            try:
                found = await self._fetcher.fetch(call_id)
            except CallFailed as exc:
                self._unanswered = 0
                await self._fail(failures, call_id, exc.status, exc.code, exc.message, exc.attempts)
                continue
            except TransientError as exc:
                await self._fail(failures, call_id, exc.status, exc.code, exc.message, exc.attempts)
                self._check_outage(exc)
                continue
            self._unanswered = 0
            stats.ok += 1
            stats.events += len(found)
            await events.add(event_lines(call_id, found))

    def _check_outage(self, last: TransientError) -> None:
        """Stop the run when the API is plainly down, rather than failing every call in turn."""
        self._unanswered += 1
        if self._unanswered >= self._outage_after:
            raise FatalApiError(
                last.status,
                "api-unavailable",
                f"{self._unanswered} calls in a row failed after every retry (last: {last}); "
                "stopping rather than failing every call. Check the base URL, the network and "
                "the API's status, then run again",
            )

    async def _fail(
        self,
        failures: NdjsonSink,
        call_id: str | None,
        status: int | None,
        code: str,
        message: str,
        attempts: int,
        *,
        line: int | None = None,
    ) -> None:
        log.debug("call %s failed: %s %s", call_id, code, message)
        self._stats.count_failure(code)
        if line is not None:
            message = f"input line {line}: {message}"
        await failures.add(failure_line(call_id, status, code, message, attempts))


def _take(records: Iterator[Record], size: int) -> list[Record]:
    return list(itertools.islice(records, size))

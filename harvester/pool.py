"""The run: call list -> bounded queue -> a fixed pool of workers -> client -> journal.

The producer reads the call list in batches off the event loop, asks the journal which records
are new (not done in an earlier run, not already on their way), sends malformed records
straight to the failures file, and closes the queue with one ``None`` per worker; that is what
ends the workers. Results collect in a batch that a committer task makes durable every
``commit_calls`` calls or ``commit_seconds`` seconds (see ``harvester.journal``).

Stopping: ``stop`` set (by a signal) makes the producer stop, drops what is queued, lets the
workers finish their calls for ``grace`` seconds, then commits. A ``FatalApiError`` in any
worker cancels the task group: no new requests go out after it; what is done is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from harvester.client import CallEventsClient
from harvester.clock import Clock, SystemClock
from harvester.config import Settings
from harvester.errors import CallFailed, FatalApiError, OutputError, TransientError
from harvester.ids import is_call_id
from harvester.journal import FAILED, OK, Batch, Journal, Verdict, input_identity
from harvester.limiter import RateLimiter
from harvester.ndjson import event_lines, failure_line
from harvester.retry import RetryingFetcher
from harvester.source import CallList, InvalidRecord, Record
from harvester.stats import RunStats

log = logging.getLogger("harvester")

# Records read per thread hop; stdin gets small batches so a slow pipe never starves workers.
FILE_BATCH = 1024
STDIN_BATCH = 32
# Calls in a row that fail after all retries, none answered, before the run stops as an outage.
OUTAGE_CALLS = 20
# A batch may grow to this many times commit_calls while a commit is under way; then workers wait.
BATCH_SLACK = 4

T = TypeVar("T")


async def harvest(
    settings: Settings,
    *,
    stats: RunStats | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    fresh: bool = False,
) -> RunStats:
    """Harvest every call of ``settings.input`` into ``settings.output``, resuming earlier work.

    Returns this invocation's counters, with the whole job's in ``stats.job``. Raises
    ``InputError`` or ``ConfigError`` before any request when the call list or the state cannot
    be used, ``FatalApiError`` when the API refuses the credentials or is down (what was done is
    committed), ``OutputError`` when a file cannot be written (nothing uncommitted counts).
    """
    stats = stats if stats is not None else RunStats()
    clock = clock if clock is not None else SystemClock()
    stop = stop if stop is not None else asyncio.Event()
    assert settings.input is not None and settings.output is not None
    identity = {
        **input_identity(settings.input),
        "user_id": settings.user_id,
        "output": str(settings.output.resolve()),
        "failures": str(settings.failures_path.resolve()),
    }
    with (
        CallList(settings.input) as calls,
        ThreadPoolExecutor(1, thread_name_prefix="harvester-journal") as disk,
    ):
        journal = await _on(
            disk, Journal.open, settings.output, settings.failures_path, identity, fresh=fresh
        )
        try:
            stats.job = journal.snapshot()
            # stdin cannot be fingerprinted up front: read it through; what is done is skipped.
            if journal.meta["completed"] and settings.input != "-":
                log.info("this job was completed earlier; nothing to do (--fresh starts over)")
                stats.completed = True
                return stats
            if journal.meta["invocations"] > 1:
                log.info("resuming: %d calls were done earlier", journal.meta["totals"]["calls"])
            limiter = RateLimiter(settings.rate, clock)
            async with CallEventsClient(settings, limiter, stats, clock) as client:
                fetcher = RetryingFetcher(client, settings, stats, clock)
                run = _Run(
                    settings, stats, fetcher, _Committer(journal, disk, settings, stats, clock)
                )
                await run.execute(calls, stop)
        finally:
            await _on(disk, journal.close)
    return stats


async def _on(
    executor: ThreadPoolExecutor, function: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: function(*args, **kwargs))


class _Committer:
    """Collects outcomes into a ``Batch`` and commits batches, one at a time, on the disk thread."""

    def __init__(
        self,
        journal: Journal,
        disk: ThreadPoolExecutor,
        settings: Settings,
        stats: RunStats,
        clock: Clock,
    ) -> None:
        self.journal = journal
        self.disk = disk
        self._stats = stats
        self._clock = clock
        self._calls = settings.commit_calls
        self._seconds = settings.commit_seconds
        self._batch = Batch()
        self._lock = asyncio.Lock()
        self._due = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._started = clock.monotonic()

    async def ok(self, key: str, line: int, lines: bytes, events: int) -> None:
        batch = self._batch
        batch.events += lines
        batch.rows.append((key, line, OK))
        batch.ok += 1
        batch.event_count += events
        await self._admitted()

    async def failed(self, key: str, line: int, record: bytes, code: str) -> None:
        batch = self._batch
        batch.failures += record
        batch.rows.append((key, line, FAILED))
        batch.failed += 1
        batch.failure_codes[code] += 1
        await self._admitted()

    async def _admitted(self) -> None:
        size = len(self._batch)
        if size >= self._calls:
            self._due.set()
            if size >= BATCH_SLACK * self._calls:
                self._room.clear()
                await self._room.wait()

    async def run(self) -> None:
        """Commit whenever a batch is full or ``commit_seconds`` have passed, until ``finish``."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._seconds):
                    await self._due.wait()
            await self.commit()
        # What arrived while the last commit was under way.
        await self.commit()

    async def finish(self, task: asyncio.Task[None]) -> None:
        """End ``run`` (the task running it) after one last commit."""
        self._closing = True
        self._due.set()
        await task

    async def commit(self) -> None:
        async with self._lock:
            self._due.clear()
            batch, self._batch = self._batch, Batch()
            stats = self._stats
            counters = {
                "requests": stats.requests,
                "retries": stats.retries,
                "rate_limited": stats.rate_limited,
            }
            elapsed = self._clock.monotonic() - self._started
            try:
                await _on(self.disk, self.journal.commit, batch, counters, elapsed)
            finally:
                self._room.set()
            stats.job = self.journal.snapshot()


class _Run:
    def __init__(
        self, settings: Settings, stats: RunStats, fetcher: RetryingFetcher, committer: _Committer
    ) -> None:
        self._settings = settings
        self._stats = stats
        self._fetcher = fetcher
        self._committer = committer
        # Calls in a row that ended in transient failures, with no answer from the API between.
        self._unanswered = 0
        self._outage_after = max(OUTAGE_CALLS, 2 * settings.concurrency)
        self._queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue(
            maxsize=2 * settings.concurrency
        )

    async def execute(self, calls: CallList, stop: asyncio.Event) -> None:
        committer = self._committer
        try:
            async with asyncio.TaskGroup() as group:
                committing = group.create_task(committer.run())
                batch = STDIN_BATCH if calls.name == "stdin" else FILE_BATCH
                producer = group.create_task(self._produce(iter(calls), batch))
                workers = [
                    group.create_task(self._work()) for _ in range(self._settings.concurrency)
                ]
                guard = group.create_task(self._stop_on(stop, producer, workers))
                await asyncio.wait([producer, *workers])
                guard.cancel()
                await committer.finish(committing)
        except* OutputError as group:
            raise group.exceptions[0] from None
        except* FatalApiError as group:
            # Keep what was done before the run stopped.
            await committer.commit()
            raise group.exceptions[0] from None
        if not stop.is_set():
            await _on(committer.disk, committer.journal.mark_completed)
            self._stats.completed = True
            self._stats.job = committer.journal.snapshot()

    async def _stop_on(
        self, stop: asyncio.Event, producer: asyncio.Task[None], workers: list[asyncio.Task[None]]
    ) -> None:
        await stop.wait()
        producer.cancel()
        # Queued calls were never started: the next run takes them on.
        while not self._queue.empty():
            if self._queue.get_nowait() is not None:
                self._stats.calls -= 1
        for _ in workers:
            self._queue.put_nowait(None)
        _, late = await asyncio.wait(workers, timeout=self._settings.grace)
        if late:
            log.info(
                "grace period over: abandoning %d calls in flight (fetched again next run)",
                len(late),
            )
        for task in late:
            task.cancel()

    async def _produce(self, records: Iterator[Record], size: int) -> None:
        stats = self._stats
        journal = self._committer.journal
        while batch := await asyncio.to_thread(_take, records, size):
            keyed = [_key_of(record) for record in batch]
            verdicts = await _on(self._committer.disk, journal.claim, keyed)
            for record, verdict in zip(batch, verdicts, strict=True):
                if verdict is Verdict.DUPLICATE:
                    stats.duplicates += 1
                    continue
                if verdict is Verdict.DONE:
                    stats.skipped += 1
                    continue
                if isinstance(record, InvalidRecord):
                    await self._invalid(
                        record.line,
                        None,
                        "invalid-input",
                        f"input line {record.line}: {record.reason}",
                    )
                    continue
                line, call_id = record
                if is_call_id(call_id):
                    await self._queue.put(record)
                    stats.calls += 1  # not before: a cancelled put took nothing on
                else:
                    await self._invalid(
                        line,
                        call_id,
                        "invalid-call-id",
                        "not a call id (c- and up to 64 letters, digits or hyphens); not sent",
                    )
        for _ in range(self._settings.concurrency):
            await self._queue.put(None)

    async def _invalid(self, line: int, call_id: str | None, code: str, message: str) -> None:
        self._stats.calls += 1
        self._stats.invalid += 1
        key = call_id if call_id is not None else _line_key(line)
        await self._fail(key, line, call_id, None, code, message, 0)

    async def _work(self) -> None:
        stats = self._stats
        while (item := await self._queue.get()) is not None:
            line, call_id = item
            try:
                found = await self._fetcher.fetch(call_id)
            except CallFailed as exc:
                self._unanswered = 0
                await self._fail(
                    call_id, line, call_id, exc.status, exc.code, exc.message, exc.attempts
                )
                continue
            except TransientError as exc:
                await self._fail(
                    call_id, line, call_id, exc.status, exc.code, exc.message, exc.attempts
                )
                self._check_outage(exc)
                continue
            self._unanswered = 0
            stats.ok += 1
            stats.events += len(found)
            await self._committer.ok(call_id, line, event_lines(call_id, found), len(found))

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
        key: str,
        line: int,
        call_id: str | None,
        status: int | None,
        code: str,
        message: str,
        attempts: int,
    ) -> None:
        log.debug("call %s failed: %s %s", call_id, code, message)
        self._stats.count_failure(code)
        await self._committer.failed(
            key, line, failure_line(call_id, status, code, message, attempts), code
        )


def _line_key(line: int) -> str:
    """The ledger key of an input line that names no call."""
    return f"\x00line:{line}"


def _key_of(record: Record) -> tuple[str, int]:
    if isinstance(record, InvalidRecord):
        return _line_key(record.line), record.line
    line, call_id = record
    return call_id, line


def _take(records: Iterator[Record], size: int) -> list[Record]:
    return list(itertools.islice(records, size))

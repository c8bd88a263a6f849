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
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from harvester.client import CallEventsClient
from harvester.clock import Clock, SystemClock
from harvester.config import Settings, render_paths
from harvester.errors import CallFailed, ConfigError, FatalApiError, OutputError, TransientError
from harvester.ids import is_call_id
from harvester.journal import (
    FAILED,
    OK,
    Batch,
    Journal,
    Verdict,
    input_identity,
    stored_identity,
)
from harvester.limiter import RateLimiter
from harvester.listing import Page, list_window, parse_window
from harvester.logs import event
from harvester.ndjson import event_lines, failure_line
from harvester.retry import Retrier
from harvester.shard import Shard
from harvester.source import CallList, InvalidRecord, Record
from harvester.stats import RunStats

# A listed call: (0, call id, its record as an NDJSON line).
Listed = tuple[int, str, bytes]

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
    """Harvest every call of ``settings.input``, or of the window's call list, into
    ``settings.output``, resuming earlier work.

    Returns this invocation's counters, with the whole job's in ``stats.job``. Raises
    ``InputError`` or ``ConfigError`` before any request when the call list, the window or the
    state cannot be used, ``FatalApiError`` when the API refuses the credentials or is down (what
    was done is committed), ``OutputError`` when a file cannot be written (nothing uncommitted
    counts).
    """
    stats = stats if stats is not None else RunStats()
    clock = clock if clock is not None else SystemClock()
    stop = stop if stop is not None else asyncio.Event()
    now = datetime.fromtimestamp(clock.time(), UTC)
    window = parse_window(settings.since, settings.until, settings.yesterday, settings.tz, now)
    shard = Shard.parse(settings.shard) if settings.shard else None
    settings = render_paths(settings, window.day if window else None, settings.shard)
    if (settings.input is None) == (window is None):
        raise ConfigError(
            "give either a call list (--input PATH, - for stdin) or a window of the API's call "
            "list (--yesterday, or --since/--until), not both"
        )
    if settings.output is None:
        raise ConfigError("no output: give --output PATH")
    paths = {"events": settings.output, "failures": settings.failures_path}
    if settings.calls_output is not None:
        if window is None:
            raise ConfigError("--calls-output keeps listed calls: it needs a window, not --input")
        paths["calls"] = settings.calls_output
    if window is not None:
        source: dict[str, Any] = {"window": window.identity()}
    else:
        assert settings.input is not None
        source = input_identity(settings.input)
    identity = {
        **source,
        "shard": str(shard) if shard else None,
        "user_id": settings.user_id,
        **{f"{name}_path": str(path.resolve()) for name, path in paths.items()},
    }
    with contextlib.ExitStack() as resources:
        calls = resources.enter_context(CallList(settings.input)) if settings.input else None
        disk = resources.enter_context(ThreadPoolExecutor(1, thread_name_prefix="harvester-disk"))
        journal = await _on(disk, Journal.open, paths, identity, fresh=fresh)
        try:
            stats.job = journal.snapshot()
            # stdin cannot be fingerprinted up front, and an open window grows with time: read
            # them through; what is done is skipped.
            growing = settings.input == "-" or (window is not None and window.open_end)
            if journal.meta["completed"] and not growing:
                log.info("this job was completed earlier; nothing to do (--fresh starts over)")
                stats.completed = True
                return stats
            if journal.meta["invocations"] > 1:
                log.info("resuming: %d calls were done earlier", journal.meta["totals"]["calls"])
            limiter = RateLimiter(settings.rate, clock)
            async with CallEventsClient(settings, limiter, stats, clock) as client:
                retrier = Retrier(settings, stats, clock)
                if calls is not None:
                    reader = resources.enter_context(
                        ThreadPoolExecutor(1, thread_name_prefix="harvester-input")
                    )
                    batches = _file_batches(calls, reader)
                else:
                    assert window is not None
                    pages = list_window(
                        client,
                        retrier,
                        window,
                        settings.list_page_size,
                        journal.meta.get("list_cursor") or None,
                    )
                    batches = _listed_batches(pages, stats)
                committer = _Committer(journal, disk, settings, stats, clock)
                run = _Run(settings, stats, client, retrier, committer, shard)
                await run.execute(batches, stop)
        finally:
            await _on(disk, journal.close)
    return stats


async def ping(settings: Settings, clock: Clock | None = None) -> float:
    """One cheap authenticated request (a page of one call); its round trip in seconds.

    Raises ``FatalApiError`` when the credentials or user id are refused, ``ApiError`` when
    the API cannot be reached or answers oddly. Nothing is retried.
    """
    clock = clock if clock is not None else SystemClock()
    stats = RunStats()
    async with CallEventsClient(settings, RateLimiter(0, clock), stats, clock) as client:
        started = clock.monotonic()
        await client.calls_page(client.calls_url(1))
        return clock.monotonic() - started


# Failure codes that say the call will never be harvested, and those of calls that do not exist.
_HOPELESS = frozenset({"invalid-call-id", "invalid-input"})
NOT_FOUND = frozenset({"call-not-found", "resource-not-found", "http-404"})


async def retry_failed(
    settings: Settings,
    *,
    include_not_found: bool = False,
    stats: RunStats | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> RunStats:
    """Harvest again the calls in ``settings.output``'s failures file that are worth it (not
    unknown calls unless ``include_not_found``), append their events exactly once, and leave
    in the failures file only what still fails, each call once."""
    stats = stats if stats is not None else RunStats()
    clock = clock if clock is not None else SystemClock()
    stop = stop if stop is not None else asyncio.Event()
    assert settings.output is not None
    identity = stored_identity(settings.output)
    if identity.get("user_id") != settings.user_id:
        raise ConfigError(
            f"{settings.output} was harvested for user {identity.get('user_id')}, not "
            f"{settings.user_id}"
        )
    paths = {
        name: Path(identity[f"{name}_path"])
        for name in ("events", "failures", "calls")
        if f"{name}_path" in identity
    }
    skip = _HOPELESS if include_not_found else _HOPELESS | NOT_FOUND
    with ThreadPoolExecutor(1, thread_name_prefix="harvester-disk") as disk:
        journal = await _on(disk, Journal.open, paths, identity)
        try:
            records = _failure_records(await _on(disk, journal.committed_failures))
            wanted = list(
                dict.fromkeys(
                    r["callId"]
                    for _, r in records
                    if r.get("code") not in skip
                    and isinstance(r.get("callId"), str)
                    and is_call_id(r["callId"])
                )
            )
            again = await _on(disk, journal.reopen, wanted)
            stats.job = journal.snapshot()
            if again:
                limiter = RateLimiter(settings.rate, clock)
                async with CallEventsClient(settings, limiter, stats, clock) as client:
                    committer = _Committer(journal, disk, settings, stats, clock)
                    committer.reopened = True
                    run = _Run(
                        settings, stats, client, Retrier(settings, stats, clock), committer, None
                    )
                    await run.execute(_one_batch(again), stop)
            # Keep each call's newest failure record, for the calls that still fail.
            lines = _failure_records(await _on(disk, journal.committed_failures))
            keys = [r["callId"] for _, r in lines if isinstance(r.get("callId"), str)]
            failing = await _on(disk, journal.failed_keys, keys)
            kept: dict[Any, tuple[bytes, dict[str, Any]]] = {}
            for number, (raw, record) in enumerate(lines):
                call_id = record.get("callId")
                key = call_id if isinstance(call_id, str) else ("line", number)
                if not isinstance(call_id, str) or call_id in failing:
                    kept.pop(key, None)
                    kept[key] = (raw, record)
            codes = Counter(str(record.get("code")) for _, record in kept.values())
            await _on(
                disk, journal.replace_failures, [raw for raw, _ in kept.values()], dict(codes)
            )
            stats.job = journal.snapshot()
            stats.completed = not stop.is_set()
        finally:
            await _on(disk, journal.close)
    return stats


def _failure_records(lines: list[bytes]) -> list[tuple[bytes, dict[str, Any]]]:
    records = []
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = {}
        records.append((line, record if isinstance(record, dict) else {}))
    return records


async def _one_batch(records: list[tuple[int, str]]) -> AsyncGenerator[SourceBatch, None]:
    yield list(records), None


# One batch from a source: records, and for a listing, the next link after them ("" at the end).
SourceBatch = tuple[list[Record | Listed], str | None]


async def _file_batches(
    calls: CallList, reader: ThreadPoolExecutor
) -> AsyncGenerator[SourceBatch, None]:
    # One thread of its own: a slow stdin never holds up commits, and the process keeps to
    # few threads (each can cost a malloc arena).
    records = iter(calls)
    size = STDIN_BATCH if calls.name == "stdin" else FILE_BATCH
    while batch := await _on(reader, _take, records, size):
        yield list(batch), None


async def _listed_batches(
    pages: AsyncGenerator[Page, None], stats: RunStats
) -> AsyncGenerator[SourceBatch, None]:
    async with contextlib.aclosing(pages):
        async for page in pages:
            stats.listed += page.listed
            stats.undated += page.undated
            yield list(page.calls), page.next_url or ""


async def _on(
    executor: ThreadPoolExecutor, function: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: function(*args, **kwargs))


@dataclass(slots=True)
class _PageMark:
    """A listed page: where the list goes on after it, and its calls not yet committed."""

    next_url: str
    outstanding: int = 0


class _Committer:
    """Collects outcomes into a ``Batch`` and commits batches, one at a time, on the disk thread.

    For a listing run it also keeps the place in the call list up to which every call is
    committed, and saves it with each commit, so a resumed night need not list from the top.
    """

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
        self._pages: deque[_PageMark] = deque()
        self._page_of: dict[str, _PageMark] = {}
        self._list_cursor: str | None = None
        self.reopened = False  # retry-failed: batches hold calls that had failed

    def expect(self, key: str, page: _PageMark) -> None:
        """``key`` comes from ``page``: the page is not done until it is committed."""
        page.outstanding += 1
        self._page_of[key] = page

    def page_claimed(self, page: _PageMark) -> None:
        """Every call of ``page`` has been claimed (and ``expect``-ed where new)."""
        self._pages.append(page)
        self._advance_pages()

    def _advance_pages(self) -> None:
        while self._pages and self._pages[0].outstanding == 0:
            self._list_cursor = self._pages.popleft().next_url

    async def ok(self, key: str, line: int, lines: bytes, events: int, listed: bytes) -> None:
        batch = self._batch
        batch.events += lines
        batch.calls += listed
        batch.rows.append((key, line, OK))
        batch.ok += 1
        batch.event_count += events
        await self._admitted()

    async def failed(self, key: str, line: int, record: bytes, code: str, listed: bytes) -> None:
        batch = self._batch
        batch.failures += record
        batch.calls += listed
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
            batch.list_cursor = self._list_cursor
            batch.reopened = self.reopened
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
            if self._page_of:
                for key, _, _ in batch.rows:
                    page = self._page_of.pop(key, None)
                    if page is not None:
                        page.outstanding -= 1
                self._advance_pages()


class _Run:
    def __init__(
        self,
        settings: Settings,
        stats: RunStats,
        client: CallEventsClient,
        retrier: Retrier,
        committer: _Committer,
        shard: Shard | None,
    ) -> None:
        self._settings = settings
        self._stats = stats
        self._client = client
        self._retrier = retrier
        self._committer = committer
        self._shard = shard
        # Calls in a row that ended in transient failures, with no answer from the API between.
        self._unanswered = 0
        self._outage_after = max(OUTAGE_CALLS, 2 * settings.concurrency)
        self._queue: asyncio.Queue[tuple[int, str, bytes] | None] = asyncio.Queue(
            maxsize=2 * settings.concurrency
        )

    async def execute(
        self, batches: AsyncGenerator[SourceBatch, None], stop: asyncio.Event
    ) -> None:
        committer = self._committer
        try:
            async with asyncio.TaskGroup() as group:
                committing = group.create_task(committer.run())
                producer = group.create_task(self._produce(batches))
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
        if not stop.is_set() and not committer.reopened:
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

    async def _produce(self, batches: AsyncGenerator[SourceBatch, None]) -> None:
        stats = self._stats
        committer = self._committer
        async with contextlib.aclosing(batches):
            async for records, next_url in batches:
                keyed = [_key_of(record) for record in records]
                if self._shard is not None:
                    owns = self._shard.owns
                    mine = [i for i, (key, _) in enumerate(keyed) if owns(key)]
                    stats.other_shard += len(keyed) - len(mine)
                    records = [records[i] for i in mine]
                    keyed = [keyed[i] for i in mine]
                if committer.reopened:  # retry-failed has claimed them already
                    verdicts = [Verdict.NEW] * len(keyed)
                else:
                    verdicts = await _on(committer.disk, committer.journal.claim, keyed)
                page = _PageMark(next_url) if next_url is not None else None
                for record, (key, _), verdict in zip(records, keyed, verdicts, strict=True):
                    if verdict is Verdict.DUPLICATE:
                        stats.duplicates += 1
                    elif verdict is Verdict.DONE:
                        stats.skipped += 1
                    else:
                        if page is not None:
                            committer.expect(key, page)
                        await self._take_on(record)
                if page is not None:
                    committer.page_claimed(page)
        for _ in range(self._settings.concurrency):
            await self._queue.put(None)

    async def _take_on(self, record: Record | Listed) -> None:
        if isinstance(record, InvalidRecord):
            reason = f"input line {record.line}: {record.reason}"
            await self._invalid(record.line, None, "invalid-input", reason, b"")
            return
        line, call_id, listed = record if len(record) == 3 else (*record, b"")
        if is_call_id(call_id):
            await self._queue.put((line, call_id, listed))
            self._stats.calls += 1  # not before: a cancelled put took nothing on
        else:
            reason = "not a call id (c- and up to 64 letters, digits or hyphens); not sent"
            await self._invalid(line, call_id, "invalid-call-id", reason, listed)

    async def _invalid(
        self, line: int, call_id: str | None, code: str, message: str, listed: bytes
    ) -> None:
        self._stats.calls += 1
        self._stats.invalid += 1
        key = call_id if call_id is not None else _line_key(line)
        await self._fail(key, line, call_id, None, code, message, 0, listed)

    async def _work(self) -> None:
        stats = self._stats
        events_of = self._client.events
        while (item := await self._queue.get()) is not None:
            line, call_id, listed = item
            try:
                found = await self._retrier.run(events_of, call_id)
            except CallFailed as exc:
                self._unanswered = 0
                await self._fail(
                    call_id, line, call_id, exc.status, exc.code, exc.message, exc.attempts, listed
                )
                continue
            except TransientError as exc:
                await self._fail(
                    call_id, line, call_id, exc.status, exc.code, exc.message, exc.attempts, listed
                )
                self._check_outage(exc)
                continue
            self._unanswered = 0
            stats.ok += 1
            stats.events += len(found)
            await self._committer.ok(call_id, line, event_lines(call_id, found), len(found), listed)

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
        listed: bytes,
    ) -> None:
        event(
            logging.DEBUG,
            "call-failed",
            "call %s failed: %s %s",
            call_id,
            code,
            message,
            call_id=call_id,
            status=status,
            code=code,
            attempts=attempts,
        )
        self._stats.count_failure(code)
        record = failure_line(call_id, status, code, message, attempts)
        await self._committer.failed(key, line, record, code, listed)


def _line_key(line: int) -> str:
    """The ledger key of an input line that names no call."""
    return f"\x00line:{line}"


def _key_of(record: Record | Listed) -> tuple[str, int]:
    if isinstance(record, InvalidRecord):
        return _line_key(record.line), record.line
    return record[1], record[0]


def _take(records: Iterator[Record], size: int) -> list[Record]:
    return list(itertools.islice(records, size))

"""The run: call list -> bounded queue -> a fixed pool of workers -> client -> journal.

The producer reads the call list in batches off the event loop, asks the journal which records
are new (not done in an earlier run, not already on their way), sends malformed records
straight to the failures file, and closes the queue with one ``None`` per worker; that is what
ends the workers. Results collect in a batch that a committer task makes durable every
``commit_calls`` calls or ``commit_seconds`` seconds (see ``harvester.journal``).

Stopping: ``stop`` set (by a signal) makes the producer stop, drops what is queued, lets the
workers finish their calls for ``grace`` seconds, then commits. Any error in any task (a
``FatalApiError``, an unreadable input) cancels the task group: no new requests go out after
it; what is done is committed (unless the disk itself failed), and the one error that matters
is raised. Calls that failed without an answer from the API are held back by an
``OutageGuard``, so an outage never lands in the failures file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from harvester.client import CallEventsClient, clip
from harvester.clock import Clock, SystemClock
from harvester.config import Settings, redact_url, render_paths
from harvester.errors import (
    CallFailed,
    ConfigError,
    FatalApiError,
    HarvesterError,
    InputError,
    OutputError,
    RateLimited,
    TransientError,
)
from harvester.ids import is_call_id
from harvester.journal import (
    FAILED,
    LINE_KEY,
    OK,
    Batch,
    Journal,
    Verdict,
    check_files,
    stored_identity,
)
from harvester.limiter import RateLimiter
from harvester.listing import Page, list_window, parse_window
from harvester.logs import event
from harvester.ndjson import Failure, event_lines
from harvester.outage import OutageGuard
from harvester.retry import Retrier
from harvester.shard import Shard
from harvester.source import InvalidRecord, Record, RecordFeed, is_stream
from harvester.stats import RunStats

# A listed call: (0, call id, its record as an NDJSON line).
Listed = tuple[int, str, bytes]

log = logging.getLogger("harvester")

# Records taken from the call list at a time, at most (a slow pipe's come as they arrive).
FILE_BATCH = 1024
# Calls in a row that fail after all retries, none answered, before the API is asked whether it
# is down (at least twice the concurrency: calls in flight when it went down fail together).
OUTAGE_CALLS = 20
# A commit is due at commit_calls calls or at this many bytes of output, whichever comes first.
COMMIT_BYTES = 32 * 1024 * 1024
# A batch may grow to this many times either while a commit is under way; then workers wait.
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
    check_files(_files(settings, paths, settings.input))
    feed: RecordFeed | None = None
    try:
        if window is not None:
            source: dict[str, Any] = {"window": window.identity()}
        else:
            assert settings.input is not None
            # Opening a FIFO waits for its writer: meanwhile a signal must still be heard.
            feed = RecordFeed(settings.input)
            opened = await _unless_stopped(stop, feed.opened())
            if opened is None:
                return stats
            source = opened
        identity = {
            **source,
            "shard": str(shard) if shard else None,
            "user_id": settings.user_id,
            **{f"{name}_path": str(path.resolve()) for name, path in paths.items()},
        }
        with ThreadPoolExecutor(1, thread_name_prefix="harvester-disk") as disk:
            journal = await _on(disk, Journal.open, paths, identity, fresh=fresh)
            try:
                stats.job = journal.snapshot()
                # A stream cannot be fingerprinted up front, and an open window grows with time:
                # read them through; what is done is skipped.
                growing = (settings.input is not None and is_stream(settings.input)) or (
                    window is not None and window.open_end
                )
                if journal.meta["completed"] and not growing:
                    log.info("this job was completed earlier; nothing to do (--fresh starts over)")
                    stats.completed = True
                    return stats
                if journal.meta["invocations"] > 1:
                    log.info(
                        "resuming: %d calls were done earlier", journal.meta["totals"]["calls"]
                    )
                limiter = RateLimiter(settings.rate, clock)
                async with CallEventsClient(settings, limiter, stats, clock) as client:
                    retrier = Retrier(settings, stats, clock)
                    if feed is not None:
                        batches = _file_batches(feed)
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
    finally:
        if feed is not None:
            feed.close()
    return stats


def _files(settings: Settings, paths: dict[str, Path], input_spec: str | None) -> dict[str, Path]:
    """Every file the run reads or writes, by the flag that names it (see ``check_files``)."""
    files = {
        "--output": paths["events"],
        "--failures": paths["failures"],
        **({"--calls-output": paths["calls"]} if "calls" in paths else {}),
    }
    if input_spec is not None:
        # stdin can be a file too (< events.ndjson): /dev/stdin resolves to it.
        files["--input"] = Path("/dev/stdin" if input_spec == "-" else input_spec)
    if settings.summary is not None:
        files["--summary"] = settings.summary
    if settings.metrics_file is not None:
        files["--metrics-file"] = settings.metrics_file
    return files


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``await work``, or None as soon as ``stop`` is set (``work`` is then abandoned)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


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
    if settings.output is None:
        raise ConfigError("no output: give --output PATH, the output of an earlier run")
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
    check_files(_files(settings, paths, None))
    skip = _HOPELESS if include_not_found else _HOPELESS | NOT_FOUND
    with ThreadPoolExecutor(1, thread_name_prefix="harvester-disk") as disk:
        journal = await _on(disk, Journal.open, paths, identity)
        try:
            # One line per failed call first, with every call the ledger holds as failed.
            await _on(disk, journal.compact_failures)
            wanted = await _on(disk, _worth_retrying, journal, skip)
            again = await _on(disk, journal.reopen, wanted)
            stats.job = journal.snapshot()
            try:
                if again:
                    limiter = RateLimiter(settings.rate, clock)
                    async with CallEventsClient(settings, limiter, stats, clock) as client:
                        retrier = Retrier(settings, stats, clock)
                        committer = _Committer(journal, disk, settings, stats, clock)
                        committer.reopened = True
                        run = _Run(settings, stats, client, retrier, committer, None)
                        await run.execute(_one_batch(again), stop)
            finally:
                # However the run ended (an outage, a 401, a signal): one line per call still
                # failing. (A kill -9 here is mended by the next open of the journal.)
                await _on(disk, journal.compact_failures)
            stats.job = journal.snapshot()
            stats.completed = not stop.is_set()
        finally:
            await _on(disk, journal.close)
    return stats


def _worth_retrying(journal: Journal, skip: frozenset[str]) -> list[str]:
    """The call ids of the failures file whose failure may pass, each once, in file order."""
    wanted: dict[str, None] = {}
    for line in journal.committed_failures():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        call_id = record.get("callId") if isinstance(record, dict) else None
        if isinstance(call_id, str) and is_call_id(call_id) and record.get("code") not in skip:
            wanted[call_id] = None
    return list(wanted)


async def _one_batch(records: list[tuple[int, str]]) -> AsyncGenerator[SourceBatch, None]:
    yield list(records), None


# One batch from a source: records, and for a listing, the next link after them ("" at the end).
SourceBatch = tuple[list[Record | Listed], str | None]


async def _file_batches(feed: RecordFeed) -> AsyncGenerator[SourceBatch, None]:
    while batch := await feed.batch(FILE_BATCH):
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

    async def failed(self, failure: Failure) -> None:
        batch = self._batch
        batch.failures += failure.as_line()
        batch.calls += failure.listed
        batch.rows.append((failure.key, failure.line, FAILED))
        batch.failed += 1
        batch.failure_codes[failure.code] += 1
        await self._admitted()

    async def _admitted(self) -> None:
        batch = self._batch
        calls, size = len(batch), batch.size
        if calls >= self._calls or size >= COMMIT_BYTES:
            self._due.set()
            if calls >= BATCH_SLACK * self._calls or size >= BATCH_SLACK * COMMIT_BYTES:
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
        self._outage = OutageGuard(
            max(OUTAGE_CALLS, 2 * settings.concurrency), self._probe, self._fail
        )
        self._last_ok: str | None = None  # a call harvested in this run: the outage probe
        self._url_confirmed = False  # the base URL and user are right: something worked
        self._input_error: InputError | None = None  # the call list broke off here
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
                stopper = group.create_task(self._stop_on(stop, producer, workers))
                await asyncio.wait([producer, *workers])
                stopper.cancel()
                if not stop.is_set():
                    # Stopped early, held calls stay undone (the next run takes them on);
                    # at the end, they are failures if the API is up.
                    await self._outage.settle()
                await committer.finish(committing)
        except Exception as caught:  # the task group's errors, or the outage guard's
            error = _the_error(caught)
            if not isinstance(error, OutputError):
                await committer.commit()  # keep what was done before the run stopped
            raise error from None
        if self._input_error is not None:
            raise self._input_error
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
        try:
            await self._take_on_all(batches)
        except InputError as exc:
            self._input_error = exc  # raised once the calls read before it are done
        for _ in range(self._settings.concurrency):
            await self._queue.put(None)

    async def _take_on_all(self, batches: AsyncGenerator[SourceBatch, None]) -> None:
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

    async def _take_on(self, record: Record | Listed) -> None:
        if isinstance(record, InvalidRecord):
            reason = f"input line {record.line}: {record.reason}"
            key = _line_key(record.line)
            await self._invalid(Failure(key, record.line, None, None, "invalid-input", reason))
            return
        line, call_id, listed = record if len(record) == 3 else (*record, b"")
        if is_call_id(call_id):
            await self._queue.put((line, call_id, listed))
            self._stats.calls += 1  # not before: a cancelled put took nothing on
        else:
            reason = "not a call id (c- and up to 64 letters, digits or hyphens); not sent"
            failure = Failure(call_id, line, call_id, None, "invalid-call-id", reason, 0, listed)
            await self._invalid(failure)

    async def _invalid(self, failure: Failure) -> None:
        self._stats.calls += 1
        self._stats.invalid += 1
        await self._fail(failure)

    async def _work(self) -> None:
        stats = self._stats
        events_of = self._client.events
        outage = self._outage
        while (item := await self._queue.get()) is not None:
            line, call_id, listed = item
            try:
                found = await self._retrier.run(events_of, call_id)
                lines = event_lines(call_id, found)
            except (CallFailed, RateLimited) as exc:  # answers: the API is up (429s too)
                if exc.status == 404 and not self._url_confirmed:
                    # Unknown calls, or a base URL with a wrong path: until one call has
                    # worked, a 404 is the API's word against the URL as much as the call's.
                    await outage.unanswered(_failure(item, exc))
                    continue
                if outage.held:
                    await outage.answered()
                await self._fail(_failure(item, exc))
                continue
            except TransientError as exc:
                await outage.unanswered(_failure(item, exc))
                continue
            except orjson.JSONEncodeError as exc:  # nested past what JSON can be written at
                message = f"an event cannot be written as JSON: {clip(str(exc))}"
                await self._fail(
                    Failure(call_id, line, call_id, 200, "malformed-answer", message, 1, listed)
                )
                continue
            except HarvesterError:
                raise
            except Exception as exc:  # what nobody foresaw fails this call, never the run
                await self._fail(_unexpected(item, exc))
                continue
            if outage.held:
                await outage.answered()
            self._last_ok, self._url_confirmed = call_id, True
            stats.ok += 1
            stats.events += len(found)
            await self._committer.ok(call_id, line, lines, len(found), listed)

    async def _probe(self) -> None:
        """A request that worked before in this run, else the first page of the call list,
        which works whenever the base URL and user are right (see ``OutageGuard``)."""
        if self._last_ok is not None:
            await self._retrier.run(self._client.events, self._last_ok)
            return
        try:
            await self._retrier.run(self._client.calls_page, self._client.calls_url(1))
            self._url_confirmed = True
        except CallFailed as exc:
            if exc.status != 404:
                raise
            settings = self._settings
            raise FatalApiError(
                404,
                "wrong-base-url",
                f"the API at {redact_url(settings.base_url)} has no call list for user "
                f"{settings.user_id} (404), so its 404s for calls say nothing of the calls: "
                "check the base URL and the user id. Nothing was listed as failed; run the same "
                "command again once they are right",
            ) from None

    async def _fail(self, failure: Failure) -> None:
        event(
            logging.DEBUG,
            "call-failed",
            "call %s failed: %s %s",
            failure.call_id,
            failure.code,
            failure.message,
            call_id=failure.call_id,
            status=failure.status,
            code=failure.code,
            attempts=failure.attempts,
        )
        self._stats.count_failure(failure.code)
        await self._committer.failed(failure)


def _failure(item: tuple[int, str, bytes], error: CallFailed | TransientError) -> Failure:
    line, call_id, listed = item
    return Failure(
        call_id, line, call_id, error.status, error.code, error.message, error.attempts, listed
    )


def _unexpected(item: tuple[int, str, bytes], error: Exception) -> Failure:
    line, call_id, listed = item
    log.warning(
        "call %s failed: unexpected %s: %s (listed as failed, code unexpected-error; please "
        "report it with this log)",
        call_id,
        type(error).__name__,
        clip(str(error)),
        exc_info=log.isEnabledFor(logging.DEBUG),
    )
    message = clip(f"{type(error).__name__}: {error}")
    return Failure(call_id, line, call_id, None, "unexpected-error", message, 1, listed)


def _the_error(error: BaseException) -> BaseException:
    """Of a task group's errors, the one that matters: the disk's, then the API's, then the
    input's, then any other."""
    leaves = list(_leaves(error))
    for kind in (OutputError, FatalApiError, InputError, HarvesterError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _line_key(line: int) -> str:
    """The ledger key of an input line that names no call."""
    return f"{LINE_KEY}{line}"


def _key_of(record: Record | Listed) -> tuple[str, int]:
    if isinstance(record, InvalidRecord):
        return _line_key(record.line), record.line
    return record[1], record[0]

"""A job: what one ``harvester run``, ``retry-failed`` or ``check`` sets up around the pool.

A job is known by its identity (its input or window, shard, user, and output layout), which the
ledger keeps; the same command run again is the same job, resumed. Set-up checks everything it
can before the first request: the window, the paths (no two naming one file), the input, the
state. Then it opens the sink, the client and the pool, and runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Awaitable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from harvester.clock import Clock, SystemClock
from harvester.errors import ConfigError, FailureCode
from harvester.fetch.client import CallEventsClient, ClientSettings
from harvester.fetch.limiter import RateLimiter
from harvester.fetch.retry import Retrier, RetrySettings
from harvester.ids import CallRef, is_call_id
from harvester.input.chunks import grew_from, is_stream
from harvester.input.listing import Page, list_window
from harvester.input.source import RecordFeed
from harvester.run.calls import SourceBatch
from harvester.run.pool import Pool, PoolSettings
from harvester.settings.config import Settings
from harvester.settings.window import Window
from harvester.stats import RunStats
from harvester.store.files import Fsync, check_files, check_writable
from harvester.store.identity import stored_identity
from harvester.store.journal import Verdict
from harvester.store.place import ListingPlace
from harvester.store.sink import CommitSettings, Sink, open_sink

log = logging.getLogger("harvester")

# Records taken from the call list at a time, at most (a slow pipe's come as they arrive).
FILE_BATCH = 1024
# Failure codes that say the call will never be harvested, and those of calls that do not exist.
_HOPELESS = frozenset({FailureCode.INVALID_CALL_ID, FailureCode.INVALID_INPUT})
NOT_FOUND = frozenset({"call-not-found", "resource-not-found", "http-404"})

T = TypeVar("T")


async def harvest(
    settings: Settings,
    *,
    stats: RunStats | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    fresh: bool = False,
    fsync: Fsync = os.fsync,
) -> RunStats:
    """Harvest every call of ``settings.input``, or of the window's call list, into
    ``settings.output``, resuming earlier work. ``fsync`` makes the output files' writes
    durable (a test gives a disk that fills up).

    Returns this invocation's counters, with the whole job's in ``stats.job``. Raises
    ``InputError`` or ``ConfigError`` before any request when the call list, the window or the
    state cannot be used, ``FatalApiError`` when the API refuses the credentials or is down (what
    was done is committed), ``OutputError`` when a file cannot be written (nothing uncommitted
    counts).
    """
    if settings.nights:
        raise ConfigError("a job of nights is harvested by harvester.run.nights.harvest_nights")
    stats = stats if stats is not None else RunStats()
    clock = clock if clock is not None else SystemClock()
    stop = stop if stop is not None else asyncio.Event()
    now = datetime.fromtimestamp(clock.time(), UTC)
    window = settings.window.at(now) if settings.window is not None else None
    paths = output_paths(settings, window)
    check_paths(settings, paths, settings.input)
    stats.files = {name: str(path) for name, path in paths.items()}
    feed: RecordFeed | None = None
    try:
        if window is not None:
            source: dict[str, Any] = {"window": window.identity()}
        else:
            assert settings.input is not None
            # Opening a FIFO waits for its writer: meanwhile a signal must still be heard.
            feed = RecordFeed(settings.input, settings.input_format, settings.id_column)
            opened = await _unless_stopped(stop, feed.opened())
            if opened is None:
                return stats
            source = opened
        identity = identity_of(settings, source, paths)
        # A call list that grew at its end is the same job, going on (see ``grew_from``).
        grew = partial(grew_from, settings.input) if settings.input is not None else None
        async with open_sink(
            paths, identity, commit_of(settings), stats, clock, fresh=fresh, grew=grew, fsync=fsync
        ) as sink:
            stats.job = sink.snapshot()
            stats.events_before = int(stats.job.get("events", 0))
            if await _goes_on(sink, stats, _growing(settings, window, now)):
                async with sink.recording("run", stop):
                    await _run(settings, stats, clock, stop, sink, feed, window)
    finally:
        if feed is not None:
            feed.close()
    return stats


def _growing(settings: Settings, window: Window | None, now: datetime) -> bool:
    """Whether the job's list may hold more than when it was last read through: a stream,
    which cannot be fingerprinted up front, or a window whose end is not past yet (it grows
    with time). Such a list is read through again; what is done is skipped."""
    if settings.input is not None:
        return is_stream(settings.input)
    return window is not None and window.growing(now)


async def _goes_on(sink: Sink, stats: RunStats, growing: bool) -> bool:
    """Whether the job opened in ``sink`` has anything to do: not when it was completed
    earlier, unless its list grows (then it is open again); said either way."""
    if sink.state.completed:
        if not growing:
            log.info("this job was completed earlier; nothing to do (--fresh starts over)")
            stats.completed = True
            return False
        await sink.reopen()
    if sink.state.invocations > 1:
        log.info("resuming: %d calls were done earlier", sink.state.totals["calls"])
    return True


def commit_of(settings: Settings) -> CommitSettings:
    """When the job's sink commits, from the settings."""
    return CommitSettings(settings.commit_calls, settings.commit_seconds)


def identity_of(
    settings: Settings, source: dict[str, Any], paths: dict[str, Path]
) -> dict[str, Any]:
    """What makes a run the same job as another: its ``source`` (the input, or the window),
    how the list is read, the shard, the user and the files it writes."""
    # How the list is read is part of the job (given only: older jobs have neither).
    reading = {"input_format": settings.input_format, "id_column": settings.id_column}
    return {
        **source,
        **{key: value for key, value in reading.items() if value is not None},
        "shard": str(settings.shard) if settings.shard else None,
        "user_id": settings.user_id,
        **{f"{name}_path": str(path.resolve()) for name, path in paths.items()},
    }


def output_paths(settings: Settings, window: Window | None) -> dict[str, Path]:
    """The files the job writes, by name: ``events``, ``failures`` and ``calls`` (if kept)."""
    if settings.input is None and window is None:
        raise ConfigError(
            "nothing to harvest: give a call list (--input PATH, - for stdin) or a window of the "
            "API's call list (--yesterday, or --since/--until)"
        )
    if settings.output is None:
        raise ConfigError("no output: give --output PATH")
    paths = {"events": settings.output, "failures": settings.failures_path}
    if settings.calls_output is not None:
        if window is None:
            raise ConfigError("--calls-output keeps listed calls: it needs a window, not --input")
        paths["calls"] = settings.calls_output
    return paths


async def _run(
    settings: Settings,
    stats: RunStats,
    clock: Clock,
    stop: asyncio.Event,
    sink: Sink,
    feed: RecordFeed | None,
    window: Window | None,
) -> None:
    """Every call of ``feed``, or of the window's call list, through the pool into ``sink``."""
    limiter = RateLimiter(settings.rate, clock, stop)
    async with CallEventsClient(ClientSettings.of(settings), limiter, stats, clock) as client:
        retrier = Retrier(RetrySettings.of(settings), stats, clock, stop, limiter)
        if feed is not None:
            batches = _file_batches(feed)
        else:
            assert window is not None
            sink.place = ListingPlace()
            resume_from = sink.state.list_cursor or None
            pages = list_window(client, retrier, window, settings.list_page_size, resume_from)
            batches = _listed_batches(pages, stats)
        claim = sink.claim
        own = PoolSettings.of(settings)
        pool = Pool(own, stats, client, retrier, sink, clock, claim=claim, shard=settings.shard)
        if await pool.run(batches, stop):
            await sink.mark_completed()


async def retry_failed(
    settings: Settings,
    *,
    include_not_found: bool = False,
    stats: RunStats | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    fsync: Fsync = os.fsync,
) -> RunStats:
    """Harvest again the calls in ``settings.output``'s failures file that are worth it (not
    unknown calls unless ``include_not_found``), append their events exactly once, and leave
    in the failures file only what still fails, each call once. ``fsync`` as ``harvest``'s."""
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
    check_paths(settings, paths, None)
    stats.files = {name: str(path) for name, path in paths.items()}
    skip = _HOPELESS if include_not_found else _HOPELESS | NOT_FOUND
    commit = commit_of(settings)
    async with open_sink(paths, identity, commit, stats, clock, fsync=fsync) as sink:
        if not sink.state.completed:
            log.info(
                "this job is not finished (%d calls done so far): retrying the failures listed "
                "until now; `harvester run` with the job's flags goes on with the rest",
                sink.state.totals["calls"],
            )
        async with sink.recording("retry-failed", stop):
            await _retry(settings, stats, clock, stop, sink, skip)
    return stats


async def _retry(
    settings: Settings,
    stats: RunStats,
    clock: Clock,
    stop: asyncio.Event,
    sink: Sink,
    skip: frozenset[str],
) -> None:
    """Take the failures worth it on again, and leave the failures file one line a call."""
    # One line per failed call first, with every call the ledger holds as failed.
    await sink.compact_failures()
    wanted = _worth_retrying(await sink.committed_failures(), skip)
    again = await sink.retake(wanted)
    stats.job = sink.snapshot()
    try:
        if again:
            limiter = RateLimiter(settings.rate, clock, stop)
            async with CallEventsClient(
                ClientSettings.of(settings), limiter, stats, clock
            ) as client:
                retrier = Retrier(RetrySettings.of(settings), stats, clock, stop, limiter)
                own_pool = PoolSettings.of(settings)
                pool = Pool(own_pool, stats, client, retrier, sink, clock, claim=_retaken)
                await pool.run(_one_batch(again), stop)
    finally:
        # However the run ended (an outage, a 401, a signal): one line per call still
        # failing. (A kill -9 here is mended by the next open of the journal.)
        await sink.compact_failures()
    stats.completed = not stop.is_set()


async def ping(settings: Settings, clock: Clock | None = None) -> float:
    """One cheap authenticated request (a page of one call); its round trip in seconds.

    Raises ``FatalApiError`` when the credentials or user id are refused, ``ApiError`` when
    the API cannot be reached or answers oddly. Nothing is retried.
    """
    clock = clock if clock is not None else SystemClock()
    stats = RunStats()
    async with CallEventsClient(
        ClientSettings.of(settings), RateLimiter(0, clock), stats, clock
    ) as client:
        started = clock.monotonic()
        await client.calls_page(client.calls_url(1))
        return clock.monotonic() - started


def check_paths(settings: Settings, paths: dict[str, Path], input_spec: str | None) -> None:
    """Every path the run will read or write, checked before the first request (refused with
    ``ConfigError`` or ``OutputError``)."""
    files = files_of(settings, paths, input_spec)
    check_files(files)
    for flag in ("--summary", "--metrics-file"):  # written at the end, or now and then
        if flag in files:
            check_writable(flag, files[flag])


def files_of(settings: Settings, paths: dict[str, Path], input_spec: str | None) -> dict[str, Path]:
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


def _worth_retrying(failures: list[bytes], skip: frozenset[str]) -> list[str]:
    """The call ids of the failures file whose failure may pass, each once, in file order."""
    wanted: dict[str, None] = {}
    for line in failures:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        call_id = record.get("callId") if isinstance(record, dict) else None
        if isinstance(call_id, str) and is_call_id(call_id) and record.get("code") not in skip:
            wanted[call_id] = None
    return list(wanted)


async def _retaken(records: list[CallRef]) -> list[Verdict]:
    """retry-failed's claim: every call it takes on was taken on again already."""
    return [Verdict.NEW] * len(records)


async def _one_batch(records: list[CallRef]) -> AsyncGenerator[SourceBatch, None]:
    yield SourceBatch(list(records))


async def _file_batches(feed: RecordFeed) -> AsyncGenerator[SourceBatch, None]:
    while batch := await feed.batch(FILE_BATCH):
        yield SourceBatch(list(batch))


async def _listed_batches(
    pages: AsyncGenerator[Page, None], stats: RunStats
) -> AsyncGenerator[SourceBatch, None]:
    async with contextlib.aclosing(pages):
        async for page in pages:
            stats.listed += page.listed
            stats.undated += page.undated
            yield SourceBatch(list(page.calls), page.next_url or "", page.oldest)

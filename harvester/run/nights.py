"""Nights: every night of a nightly job harvested exactly once, whatever happens to a run.

``--nights N`` (``--yesterday`` is ``--nights 1``) takes the last N complete days and every
earlier night that a run left unfinished (``harvester.run.night_plan``): each night a job of its
own, the very job ``--since DAY --until DAY+1`` makes. A night completed earlier is not
touched. The others are harvested in one pass over the API's call list: it lists calls newest
first and has no date filter, so reaching a night three days back means paging through the days
after it; the pass goes back once, to the oldest night's start, and hands each call to its
night's pool (one pool a night, sharing the client, the rate limiter and the retry policy).

A pass resumes from the newest unfinished night's place in the list, if it has one: the older
nights' calls all come after it. ``retry_nights`` retries the failures of each night begun,
one night after the other; both report each night as ``harvester.run.night_report`` has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import Any

from harvester.clock import Clock, SystemClock
from harvester.errors import AlreadyRunning, ConfigError, HarvesterError, status_of
from harvester.exits import NightState, Status
from harvester.fetch.client import CallEventsClient, ClientSettings
from harvester.fetch.limiter import RateLimiter
from harvester.fetch.retry import Retrier, RetrySettings
from harvester.input.listing import ListedCall, Page, list_window
from harvester.run.calls import SourceBatch
from harvester.run.job import check_paths, commit_of, identity_of, retry_failed
from harvester.run.night_plan import Night, night_state, plan
from harvester.run.night_report import entry_of, together
from harvester.run.pool import Pool, PoolSettings
from harvester.settings.config import Settings
from harvester.settings.window import Window
from harvester.stats import RunStats
from harvester.store.files import Fsync
from harvester.store.place import ListingPlace
from harvester.store.sink import Sink, open_sink

log = logging.getLogger("harvester")

# What ends a night's feed: the pass has gone back past the night's start.
_END = object()


async def harvest_nights(
    settings: Settings,
    *,
    stats: RunStats | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    fsync: Fsync = os.fsync,
) -> RunStats:
    """Harvest every night of ``settings`` not completed yet (see the module docstring);
    ``fsync`` makes the output files' writes durable (``harvester.run.job.harvest``'s).

    Returns this run's counters, with one entry a night in ``stats.nights`` (its date, its
    status, and its job's counters). Raises before any night is touched when the settings or
    paths cannot be used (``ConfigError``) or when another harvester runs one of the nights
    (``AlreadyRunning``); what goes wrong after that is each night's own, in its entry.
    """
    if settings.output is None:
        raise ConfigError("no output: give --output PATH, with {date} in it")
    stats = stats if stats is not None else RunStats()
    clock = clock if clock is not None else SystemClock()
    stop = stop if stop is not None else asyncio.Event()
    nights = plan(settings)
    for each in nights:
        check_paths(each.settings, each.paths, None)
    running = [each for each in nights if each.state == NightState.RUNNING]
    if running:
        raise _already(running[0])
    pending = [each for each in nights if each.state != NightState.COMPLETED]
    stats.nights_behind = len(pending)
    _say_plan(nights, pending)
    async with contextlib.AsyncExitStack() as opened:
        for each in pending:
            each.sink = await opened.enter_async_context(_opened_sink(each, clock, fsync))
        pending = [each for each in pending if not _completed_meanwhile(each)]
        # What earlier runs wrote of the nights taken on: the progress says the job's events.
        stats.events_before = sum(int(each.stats.job.get("events", 0)) for each in pending)
        if pending:
            await _harvest(settings, stats, clock, stop, pending)
    stats.nights = [entry_of(each, settings) for each in nights]
    stats.nights_behind = sum(entry["status"] != Status.COMPLETED for entry in stats.nights)
    stats.completed = stats.nights_behind == 0
    # The nights' counters added up; requests are counted for the run, not for each night.
    run = {"requests": stats.requests, "retries": stats.retries, "rate_limited": stats.rate_limited}
    stats.job = {**together(stats.nights), **run}
    return stats


@contextlib.asynccontextmanager
async def _opened_sink(each: Night, clock: Clock, fsync: Fsync) -> AsyncIterator[Sink]:
    """The night's sink (its journal, its lock), with the identity ``--since/--until`` of the
    night would give it."""
    own = each.settings
    identity = identity_of(own, {"window": each.window.identity()}, each.paths)
    opened = False
    try:
        commit = commit_of(own)
        async with open_sink(each.paths, identity, commit, each.stats, clock, fsync=fsync) as sink:
            opened = True
            each.stats.job = sink.snapshot()
            yield sink
    except AlreadyRunning as exc:
        if opened:  # another night's, passing through on the way out
            raise
        raise _already(each, exc.pid) from exc


def _already(each: Night, pid: str | None = None) -> AlreadyRunning:
    if pid is None:
        pid = str(night_state(each.paths["events"]).get("running_pid"))
    return AlreadyRunning(
        f"another harvester (pid {pid}) is running night {each.day} of this job now: this run "
        "is turned away and changes nothing; the other goes on",
        pid,
    )


def _completed_meanwhile(each: Night) -> bool:
    """A night completed by another run between our look and our lock: nothing to do."""
    assert each.sink is not None
    if each.sink.state.completed:
        each.state, each.status = NightState.COMPLETED, Status.COMPLETED
        return True
    return False


def _say_plan(nights: list[Night], pending: list[Night]) -> None:
    done = len(nights) - len(pending)
    if not pending:
        which = "the night was" if len(nights) == 1 else f"all {len(nights)} nights were"
        log.info("%s completed earlier; nothing to do", which)
        return
    which = ", ".join(f"{each.day} ({each.state})" for each in pending)
    log.info(
        "nights %s to %s: %d completed earlier; harvesting %s",
        nights[0].day,
        nights[-1].day,
        done,
        which,
    )


async def _harvest(
    settings: Settings, stats: RunStats, clock: Clock, stop: asyncio.Event, pending: list[Night]
) -> None:
    """The pending nights, in one pass over the call list (see the module docstring)."""
    limiter = RateLimiter(settings.rate, clock, stop)
    async with CallEventsClient(ClientSettings.of(settings), limiter, stats, clock) as client:
        retrier = Retrier(RetrySettings.of(settings), stats, clock, stop, limiter)
        span = Window(pending[0].window.since, pending[-1].window.until, pending[0].day)
        pages = list_window(client, retrier, span, settings.list_page_size, _resume_from(pending))
        async with asyncio.TaskGroup() as group:
            group.create_task(_deal(pages, pending, stats))
            for each in pending:
                group.create_task(_night(each, settings, stats, client, retrier, clock, stop))


def _resume_from(pending: list[Night]) -> str | None:
    """Where in the call list the pass goes on: the earliest of the pending nights' places
    (each is where all its calls before it are committed; an older night's calls may still
    wait on a page a newer night is past). Places are compared by time, their pages' oldest
    start: newest first, the newer the earlier. The top when a night has no place yet."""
    places = []
    for each in pending:
        assert each.sink is not None
        cursor, time = each.sink.state.list_cursor, each.sink.state.list_cursor_time
        if not cursor or not isinstance(time, str):
            return None
        places.append((datetime.fromisoformat(time), cursor))
    return max(places)[1] if places else None


async def _deal(pages: AsyncGenerator[Page, None], pending: list[Night], stats: RunStats) -> None:
    """Hand each listed call to its night, newest first; a night's feed ends once the pass has
    gone back past its start. What stops the listing stops every night's feed with it."""
    active = list(reversed(pending))  # newest first, as the list comes
    try:
        async with contextlib.aclosing(pages):
            async for page in pages:
                stats.listed += page.listed
                stats.undated += page.undated
                for each in list(active):
                    mine = [call for call in page.calls if _of(each, call)]
                    if mine:
                        stats.night = str(each.day)
                    await _hand(each, (mine, page.next_url or "", page.oldest))
                    if _passed(each, page):
                        await _hand(each, _END)
                        active.remove(each)
                if not active:
                    return
    except Exception as exc:  # the listing's error is every night's
        for each in active:
            await _hand(each, exc)
        return
    for each in active:
        await _hand(each, _END)


def _of(each: Night, call: ListedCall) -> bool:
    window = each.window
    return call.start is not None and window.since <= call.start < window.until


def _passed(each: Night, page: Page) -> bool:
    """True once the pass has gone back past the night's start (or the list ended)."""
    return page.next_url is None or (page.oldest is not None and page.oldest < each.window.since)


async def _hand(each: Night, item: object) -> None:
    """Put ``item`` in the night's feed, unless its pool has ended (then nobody takes it)."""
    if each.over.is_set():
        return
    putting = asyncio.ensure_future(each.feed.put(item))
    ending = asyncio.ensure_future(each.over.wait())
    try:
        await asyncio.wait([putting, ending], return_when=asyncio.FIRST_COMPLETED)
    finally:
        putting.cancel()
        ending.cancel()


async def _fed(each: Night) -> AsyncGenerator[SourceBatch, None]:
    """The night's calls as the pool takes them, batch by batch."""
    while True:
        item = await each.feed.get()
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        calls, next_url, oldest = item
        yield SourceBatch(list(calls), next_url, oldest)


async def _night(
    each: Night,
    settings: Settings,
    stats: RunStats,
    client: CallEventsClient,
    retrier: Retrier,
    clock: Clock,
    stop: asyncio.Event,
) -> None:
    """One night through its pool; how it ended goes in ``each``, whatever it was."""
    sink = each.sink
    assert sink is not None
    sink.place = ListingPlace()
    own = PoolSettings.of(settings)
    pool = Pool(own, stats, client, retrier, sink, clock, claim=sink.claim, shard=settings.shard)
    try:
        async with sink.recording("run", stop):
            if await pool.run(_fed(each), stop):
                await sink.mark_completed()
                each.status = Status.COMPLETED
                stats.nights_behind -= 1
                done = sink.snapshot()
                log.info("night %s: completed (%s)", each.day, _counts(done))
                if not done.get("calls"):  # as a window with no call says it (exit 7 if asked)
                    log.warning(
                        "nothing to harvest: the night %s holds no call at all (is it the "
                        "account's user id? --fail-on-empty makes this exit 7)",
                        each.day,
                    )
            else:
                each.status = Status.STOPPED
    except HarvesterError as exc:
        each.status, each.error = status_of(exc), str(exc)
        log.info("night %s: %s", each.day, each.status)
    except Exception as exc:  # a bug: this night's, said as such; the others go on
        log.error("night %s: internal error", each.day, exc_info=exc)
        each.status, each.error = Status.CRASHED, f"internal error: {type(exc).__name__}"
    finally:
        each.over.set()


def _counts(job: dict[str, Any]) -> str:
    return f"{job.get('calls', 0)} calls: {job.get('ok', 0)} ok, {job.get('failed', 0)} failed"


async def retry_nights(
    settings: Settings,
    *,
    include_not_found: bool = False,
    stats: RunStats | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    fsync: Fsync = os.fsync,
) -> RunStats:
    """``retry-failed`` for each night of ``settings`` that a run has begun, one after the
    other; one entry a night in ``stats.nights``, as ``harvest_nights`` gives them."""
    if settings.output is None:
        raise ConfigError("no output: give --output PATH, the template of an earlier run")
    stats = stats if stats is not None else RunStats()
    stop = stop if stop is not None else asyncio.Event()
    nights = [each for each in plan(settings) if each.state != NightState.NOT_STARTED]
    running = [each for each in nights if each.state == NightState.RUNNING]
    if running:
        raise _already(running[0])
    for each in nights:
        if stop.is_set():
            each.status = Status.STOPPED
            continue
        try:
            await retry_failed(
                each.settings,
                include_not_found=include_not_found,
                stats=stats,
                clock=clock,
                stop=stop,
                fsync=fsync,
            )
            each.status = Status.COMPLETED if not stop.is_set() else Status.STOPPED
        except AlreadyRunning:
            raise
        except HarvesterError as exc:
            each.status, each.error = status_of(exc), str(exc)
        log.info("night %s: %s", each.day, each.status)
    stats.nights = [entry_of(each, settings) for each in nights]
    stats.nights_behind = sum(not entry["job_completed"] for entry in stats.nights)
    stats.completed = not stop.is_set()
    run = {"requests": stats.requests, "retries": stats.retries, "rate_limited": stats.rate_limited}
    stats.job = {**together(stats.nights), **run}
    return stats

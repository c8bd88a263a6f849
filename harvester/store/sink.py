"""The sink: where the workers' outcomes go, to be made durable in batches by the journal.

Outcomes collect in a ``Batch`` that is committed every ``commit_calls`` calls, every
``COMMIT_BYTES`` of output or every ``commit_seconds`` seconds, whichever comes first, one
commit at a time, on the journal's one disk thread (see ``harvester.store.journal``). A batch
may grow to ``BATCH_SLACK`` times either bound while a commit is under way; then the workers
wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiofiles

from harvester import exits
from harvester.clock import Clock
from harvester.errors import HarvesterError, OutputError, status_of
from harvester.exits import Status
from harvester.ids import CallRef
from harvester.stats import RunStats
from harvester.store import failures
from harvester.store.batch import Batch
from harvester.store.files import DAMAGED, Fsync
from harvester.store.journal import Journal, Verdict
from harvester.store.ledger import FAILED, OK, line_key
from harvester.store.ndjson import Failure, event_lines
from harvester.store.place import ListingPlace
from harvester.store.state import JobState

# The store as the pool sees it: the sink, what its claims answer, and what it is handed (an
# outcome's lines, a failure, the key of an input line that names no call).
__all__ = [
    "CommitSettings",
    "Failure",
    "ListingPlace",
    "Sink",
    "Verdict",
    "event_lines",
    "line_key",
    "open_sink",
]

# A commit is due at commit_calls calls or at this many bytes of output, whichever comes first.
COMMIT_BYTES = 32 * 1024 * 1024
# A batch may grow to this many times either while a commit is under way; then workers wait.
BATCH_SLACK = 4

# A failed run's reason, as the ledger keeps it for `harvester status`, at most.
REASON_LIMIT = 1000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CommitSettings:
    """When the sink commits: every ``calls`` calls or ``seconds`` seconds, whichever first."""

    calls: int
    seconds: float


@contextlib.asynccontextmanager
async def open_sink(
    paths: dict[str, Path],
    identity: dict[str, Any],
    commit: CommitSettings,
    stats: RunStats,
    clock: Clock,
    *,
    fresh: bool = False,
    grew: Callable[[dict[str, Any]], bool] | None = None,
    fsync: Fsync = os.fsync,
) -> AsyncIterator[Sink]:
    """The sink of the job writing ``paths``: its journal opened (see ``Journal.open``, which
    ``fresh``, ``grew`` and ``fsync`` are given to) on a disk thread of its own, and closed on
    the way out."""
    with ThreadPoolExecutor(1, thread_name_prefix="harvester-disk") as disk:
        journal = await on_thread(
            disk, Journal.open, paths, identity, fresh=fresh, grew=grew, fsync=fsync
        )
        try:
            yield Sink(journal, disk, commit, stats, clock)
        finally:
            await on_thread(disk, journal.close)


async def on_thread(
    executor: ThreadPoolExecutor, function: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """``function(*args, **kwargs)``, run on ``executor``'s thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: function(*args, **kwargs))


class Sink:
    """Collects outcomes into batches and commits them, one at a time, on the disk thread.

    Every journal call goes through here, on that thread: the event loop never blocks on disk.
    For a listing run, ``place`` is told which calls are committed and saved with each commit.
    """

    def __init__(
        self,
        journal: Journal,
        disk: ThreadPoolExecutor,
        commit: CommitSettings,
        stats: RunStats,
        clock: Clock,
    ) -> None:
        self._journal = journal
        self._disk = disk
        self._stats = stats
        self._clock = clock
        self._calls = commit.calls
        self._seconds = commit.seconds
        self._batch = Batch()
        self._lock = asyncio.Lock()
        self._due = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._started = clock.monotonic()
        self.place: ListingPlace | None = None

    # -- the job's questions ------------------------------------------------------------------

    @property
    def state(self) -> JobState:
        """The job's state as last committed (see ``harvester.store.state``)."""
        return self._journal.state

    def snapshot(self) -> dict[str, Any]:
        """The whole job's counters as committed."""
        return self._journal.state.snapshot()

    async def claim(self, records: list[CallRef]) -> list[Verdict]:
        """See ``Journal.claim``."""
        return await self._on_disk(self._journal.claim, records)

    async def harvested_call(self) -> str | None:
        """See ``Journal.harvested_call``."""
        return await self._on_disk(self._journal.harvested_call)

    async def retake(self, keys: list[str]) -> list[CallRef]:
        """See ``Journal.retake``."""
        return await self._on_disk(self._journal.retake, keys)

    async def committed_failures(self) -> list[bytes]:
        """The failures file's lines that the ledger vouches for, read through aiofiles (no
        commit is under way meanwhile); a damaged file is rebuilt on the disk thread first (see
        ``Journal.committed_failures``)."""
        path = self._journal.paths["failures"]
        size = self._journal.state.sizes["failures"]
        try:
            async with aiofiles.open(path, "rb") as file:
                data = await file.read(size)
            return failures.committed_lines(data, size, path)
        except DAMAGED:
            return await self._on_disk(self._journal.committed_failures)

    async def compact_failures(self) -> None:
        """See ``Journal.compact_failures``."""
        await self._on_disk(self._journal.compact_failures)
        self._stats.job = self.snapshot()

    @contextlib.asynccontextmanager
    async def recording(self, command: str, stop: asyncio.Event) -> AsyncIterator[None]:
        """Record in the ledger when this run began and how it ended (``harvester status``)."""
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        await self._on_disk(
            self._journal.note_run,
            command=command,
            started_at=started_at,
            status=Status.RUNNING,
            ended_at=None,
        )
        status = Status.STOPPED
        # Why a run failed, in our words, and its exit code: a 401 and an API that cannot be
        # reached both end a run early, and only the reason tells them apart.
        why: dict[str, Any] = {}
        try:
            yield
            status = Status.COMPLETED if not stop.is_set() else Status.STOPPED
        except Exception as exc:
            status = status_of(exc)
            if isinstance(exc, HarvesterError):
                why["reason"] = str(exc)[:REASON_LIMIT]  # our own words, as the command says
            else:  # a bug: its text is not ours to keep, its kind is
                why["reason"] = f"internal error ({type(exc).__name__}): please report it"
            why["exit_code"] = exits.OF_STATUS[status]
            raise
        finally:
            ended_at = datetime.now(UTC).isoformat(timespec="seconds")
            with contextlib.suppress(OutputError):  # a full disk refuses this too
                await self._on_disk(self._journal.note_run, status=status, ended_at=ended_at, **why)

    async def reopen(self) -> None:
        """A completed job whose input is read through again (a stream, an open window): not
        completed until this run is."""
        await self._on_disk(self._journal.reopen)
        self._stats.job = self.snapshot()

    async def mark_completed(self) -> None:
        """Record that every input record has reached an outcome."""
        await self._on_disk(self._journal.mark_completed)
        self._stats.completed = True
        self._stats.job = self.snapshot()

    # -- outcomes -----------------------------------------------------------------------------

    async def ok(self, key: str, line: int, lines: bytes, events: int, listed: bytes) -> None:
        """A call harvested: ``lines``, its ``events`` events as NDJSON."""
        batch = self._batch
        batch.events += lines
        batch.calls += listed
        batch.rows.append((key, line, OK))
        batch.ok += 1
        batch.event_count += events
        if self._full(batch):  # only then a coroutine: this runs for every call
            await self._admitted(batch)

    async def failed(self, failure: Failure) -> None:
        """A call (or an input line) that is not harvested, and why."""
        batch = self._batch
        batch.failures += failure.as_line()
        batch.calls += failure.listed
        batch.rows.append((failure.key, failure.line, FAILED))
        batch.failed += 1
        batch.failure_codes[failure.code] += 1
        if self._full(batch):
            await self._admitted(batch)

    def _full(self, batch: Batch) -> bool:
        """``batch`` holds enough for a commit."""
        return len(batch) >= self._calls or batch.size >= COMMIT_BYTES

    async def _admitted(self, batch: Batch) -> None:
        """A full ``batch``: its commit is due; the worker waits while it has grown to
        ``BATCH_SLACK`` times a commit's worth as one is under way."""
        self._due.set()
        if len(batch) >= BATCH_SLACK * self._calls or batch.size >= BATCH_SLACK * COMMIT_BYTES:
            self._room.clear()
            await self._room.wait()

    # -- committing ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit whenever a batch is full or ``commit_seconds`` have passed on the clock, until
        ``finish``."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(self._seconds):
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
        """Make what was collected durable (see ``Journal.commit``)."""
        async with self._lock:
            self._due.clear()
            batch, self._batch = self._batch, Batch()
            place = self.place
            if place is not None:
                batch.list_cursor, batch.list_cursor_time = place.cursor, place.cursor_time
            stats = self._stats
            counters = {
                "requests": stats.requests,
                "retries": stats.retries,
                "rate_limited": stats.rate_limited,
                "duplicates": stats.duplicates,
            }
            elapsed = self._clock.monotonic() - self._started
            try:
                await self._on_disk(self._journal.commit, batch, counters, elapsed)
            finally:
                self._room.set()
            stats.job = self.snapshot()
            if place is not None:
                place.committed(key for key, _, _ in batch.rows)

    async def _on_disk(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await on_thread(self._disk, function, *args, **kwargs)

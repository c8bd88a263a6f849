"""``--dry-run``: what a run would do, counted, with nothing fetched and nothing written.

The call list is read, or the window's calls listed (list requests only, never a call's
events), and each call is judged as the run would judge it: new (its events would be
fetched), done by an earlier run, a duplicate of another line, another shard's, or not a call
id. Earlier runs' ledgers are read, never locked or changed; the calls seen so far are kept in
a scratch database in a temporary folder, removed at the end, so that memory stays flat
however long the list. The checks a run makes before its first request are made too: the
same settings error ends a dry run as it would end the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from harvester.clock import Clock, SystemClock
from harvester.errors import InputError, OutputError
from harvester.fetch.client import CallEventsClient, ClientSettings
from harvester.fetch.limiter import RateLimiter
from harvester.fetch.retry import Retrier, RetrySettings
from harvester.ids import is_call_id
from harvester.input.chunks import grew_from, is_stream
from harvester.input.listing import ListedCall, Page, list_window
from harvester.input.records import InvalidRecord, Record
from harvester.input.source import RecordFeed
from harvester.logs import counted
from harvester.run.calls import key_of
from harvester.run.job import FILE_BATCH, files_of, identity_of, output_paths
from harvester.run.night_plan import plan
from harvester.settings.config import Settings
from harvester.settings.shard import Shard
from harvester.settings.window import Window
from harvester.stats import RunStats
from harvester.store.files import check_files, check_no_data
from harvester.store.identity import check_identity, grown
from harvester.store.ledger import ledger_errors, lookup, read_only, state_dir
from harvester.store.state import JobState, load_state
from harvester.store.status import lock_holder


@dataclass
class Tally:
    """What a run would do with the calls of one job (one night, with ``--nights``)."""

    output: str
    state: str = "not started"  # of the job: not started, unfinished, completed
    new: int = 0  # its events would be fetched
    done: int = 0  # reached an outcome in an earlier run: skipped
    duplicates: int = 0  # the same call stands on another line, or was listed twice
    other_shard: int = 0  # another --shard's
    invalid: int = 0  # names no call: straight to the failures file, no request
    night: str | None = None
    note: str | None = None  # why nothing is counted (completed earlier, started over)
    damaged: bool = False  # the input is damaged: the run would stop there, exit 2


async def dry_run(
    settings: Settings, *, fresh: bool = False, clock: Clock | None = None
) -> list[Tally]:
    """What ``harvester run`` with ``settings`` would do: one tally a job (a night each, with
    ``--nights``). Raises what the run would raise before its first request."""
    clock = clock if clock is not None else SystemClock()
    with tempfile.TemporaryDirectory(prefix="harvester-dry-run-") as scratch:
        if settings.nights:
            return await _nights(settings, Path(scratch), clock)
        return [await _job(settings, Path(scratch), clock, fresh)]


async def _job(settings: Settings, scratch: Path, clock: Clock, fresh: bool) -> Tally:
    now = datetime.fromtimestamp(clock.time(), UTC)
    window = settings.window.at(now) if settings.window is not None else None
    paths = output_paths(settings, window)
    _check_as_the_run(settings, paths, settings.input)
    tally = Tally(str(paths["events"]))
    if window is not None:
        source = {"window": window.identity()}
        with _judged(tally, settings, paths, source, scratch, fresh) as judge:
            if judge is not None:
                await _listed(settings, clock, window, [(None, judge)])
        return tally
    assert settings.input is not None
    feed = RecordFeed(settings.input, settings.input_format, settings.id_column)
    try:
        source = await feed.opened()
        grew = partial(grew_from, settings.input)
        growing = is_stream(settings.input)
        with _judged(tally, settings, paths, source, scratch, fresh, grew, growing) as judge:
            if judge is not None:
                try:
                    while batch := await feed.batch(FILE_BATCH):
                        judge.take(batch)
                except InputError as exc:  # the run would stop there too, with exit 2
                    tally.note = f"the run would stop where {_after_colon(exc)}"
                    tally.damaged = True
    finally:
        feed.close()
    return tally


async def _nights(settings: Settings, scratch: Path, clock: Clock) -> list[Tally]:
    """Each night of the job: those not completed judged in one pass over the call list, as
    the run would make it."""
    tallies = []
    pending: list[tuple[Window | None, Judge]] = []
    with contextlib.ExitStack() as stack:
        for each in plan(settings):
            tally = Tally(str(each.paths["events"]), night=str(each.day))
            tallies.append(tally)
            window = each.settings.window
            assert window is not None
            source = {"window": window.identity()}
            judge = stack.enter_context(_judged(tally, each.settings, each.paths, source, scratch))
            if judge is not None:
                _check_as_the_run(each.settings, each.paths, None)
                pending.append((window, judge))
        if pending:
            first, last = pending[0][0], pending[-1][0]
            assert first is not None and last is not None
            span = Window(first.since, last.until, first.day)
            await _listed(settings, clock, span, pending)
    return tallies


def _check_as_the_run(settings: Settings, paths: dict[str, Path], input_spec: str | None) -> None:
    """What the run checks before its first request, and as it opens its job, short of
    writing anything: every path a file of its own, each in a folder that takes files, and no
    file of data without a ledger (the run would refuse to cut it)."""
    files = files_of(settings, paths, input_spec)
    check_files(files)
    for flag, path in files.items():
        if flag != "--input":
            _check_folder(flag, path)
    if not (state_dir(paths["events"]) / "ledger.sqlite").exists():
        check_no_data(paths.values())


def _check_folder(flag: str, path: Path) -> None:
    """``path``'s folder, or the nearest that exists, takes new files, as far as can be told
    without making one (a dry run writes nothing): not read-only, and writable by us."""
    folder = path.resolve().parent
    while not folder.exists():
        folder = folder.parent
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    if read_only or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"{flag} {path} cannot be written ({folder} does not take new files): fix the "
            "permissions or choose another path"
        )


def _after_colon(exc: InputError) -> str:
    """The input error's own words, from where it says what happened (its first clause)."""
    text = str(exc)
    return text.split("; ", 1)[0].removeprefix("the ")


@contextlib.contextmanager
def _judged(
    tally: Tally,
    settings: Settings,
    paths: dict[str, Path],
    source: dict[str, Any],
    scratch: Path,
    fresh: bool = False,
    grew: Callable[[dict[str, Any]], bool] | None = None,
    growing: bool = False,
) -> Iterator[Judge | None]:
    """A judge of the job's calls, with its ledger read as the run would read it (its
    identity checked, a call list grown at its end going on); None when the run would have
    nothing to do. ``tally`` gets the counts at the end."""
    identity = identity_of(settings, source, paths)
    ledger = state_dir(paths["events"]) / "ledger.sqlite"
    earlier: sqlite3.Connection | None = None
    pid = lock_holder(ledger.with_name("lock"))
    try:
        state: JobState | None = None
        if ledger.exists():
            with ledger_errors(ledger):
                earlier = read_only(ledger, writing=pid is not None)
                state = load_state(earlier, ledger)
        if state is not None:
            tally.state = "completed" if state.completed else "unfinished"
            if pid is not None:  # the run would be turned away (exit 75) until it ends
                tally.state = (
                    f"running now, pid {pid}: a run would be turned away; counted as it stands"
                )
        if state is not None and fresh:
            done = counted(state.totals.get("calls", 0), "input record")
            tally.note = f"--fresh: the earlier progress ({done} done) would be discarded"
            state = None
        elif state is not None and grew is not None and grown(state.identity, identity, grew):
            state.completed = False  # its new calls would be taken on (read, not written back)
        else:
            check_identity(state, identity)
        if state is not None and state.completed and not growing:
            again = "" if tally.night else " (--fresh starts over)"
            tally.note = f"completed earlier, nothing to do{again}"
            yield None
            return
        seen = scratch / f"seen-{len(list(scratch.iterdir()))}.sqlite"
        judge = Judge(seen, settings.shard, earlier if state is not None else None)
        try:
            yield judge
        finally:
            judge.close(tally)
    finally:
        if earlier is not None:
            earlier.close()


class Judge:
    """Each call of one job judged as the run's pool would judge it (``Pool._take_on_all``):
    another shard's first, then done by an earlier run or a duplicate, and of the rest, new
    or naming no call. The calls seen are kept in a scratch database, not in memory."""

    def __init__(
        self, scratch: Path, shard: Shard | None, earlier: sqlite3.Connection | None
    ) -> None:
        self._earlier = earlier  # the job's ledger, read only (None: nothing done earlier)
        self._shard = shard
        self._seen = sqlite3.connect(scratch)
        self._seen.execute("PRAGMA journal_mode=OFF")
        self._seen.execute("PRAGMA synchronous=OFF")
        self._seen.execute(
            "CREATE TABLE calls (call_id TEXT PRIMARY KEY, line INTEGER, outcome INTEGER) "
            "WITHOUT ROWID"
        )
        self.counts: Counter[str] = Counter()

    def take(self, records: Sequence[Record | ListedCall]) -> None:
        """Judge a batch of records, in their order."""
        counts = self.counts
        keyed = [(record, *key_of(record)) for record in records]
        if self._shard is not None:
            owns = self._shard.owns
            mine = [item for item in keyed if owns(item[1])]
            counts["other_shard"] += len(keyed) - len(mine)
            keyed = mine
        found = lookup(self._earlier, (key for _, key, _ in keyed)) if self._earlier else {}
        seen = lookup(self._seen, (key for _, key, _ in keyed if key not in found))
        first: dict[str, int] = {}
        for record, key, line in keyed:
            if key in found:
                counts["done" if found[key] == line else "duplicates"] += 1
            elif key in seen or key in first:
                counts["duplicates"] += 1
            else:
                first[key] = line
                counts["new" if _names_a_call(record) else "invalid"] += 1
        with self._seen:
            self._seen.executemany("INSERT INTO calls VALUES (?, ?, 0)", list(first.items()))

    def close(self, into: Tally) -> None:
        """Add the counts to ``into``; forget the calls seen."""
        for name, count in self.counts.items():
            setattr(into, name, getattr(into, name) + count)
        self._seen.close()


def _names_a_call(record: Record | ListedCall) -> bool:
    if isinstance(record, InvalidRecord):
        return False
    return is_call_id(record.call_id if isinstance(record, ListedCall) else record.key)


async def _listed(
    settings: Settings, clock: Clock, window: Window, judges: list[tuple[Window | None, Judge]]
) -> None:
    """List ``window`` once, newest call first, back to its start; each call judged by the
    judge of the night it falls in (None: every call of the window)."""
    stop = asyncio.Event()
    limiter = RateLimiter(settings.rate, clock, stop)
    stats = RunStats()
    async with CallEventsClient(ClientSettings.of(settings), limiter, stats, clock) as client:
        retrier = Retrier(RetrySettings.of(settings), stats, clock, stop, limiter)
        pages: AsyncGenerator[Page, None] = list_window(
            client, retrier, window, settings.list_page_size
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                for night, judge in judges:
                    judge.take([call for call in page.calls if _in(night, call)])


def _in(night: Window | None, call: ListedCall) -> bool:
    if night is None:
        return True
    return call.start is not None and night.since <= call.start < night.until


def dry_run_lines(tallies: list[Tally]) -> list[str]:
    """The dry run's report, a line a job (a night), and the whole when there are several."""
    lines = ["dry run: nothing was fetched or written"]
    for tally in tallies:
        head = f"{tally.night}  " if tally.night else ""
        if tally.state == "completed" and tally.note and not tally.new:
            lines.append(f"{head}{tally.output}: {tally.note}")
            continue
        head += f"{tally.output} ({tally.state})"
        lines.append(f"{head}: {_counts(tally)}" + (f"; {tally.note}" if tally.note else ""))
    if len(tallies) > 1:
        whole = Tally("")
        for tally in tallies:
            for name in _COUNTED:
                setattr(whole, name, getattr(whole, name) + getattr(tally, name))
        lines.append(f"in all: {_counts(whole)}")
    return lines


_COUNTED = ("new", "done", "duplicates", "other_shard", "invalid")


def _counts(tally: Tally) -> str:
    said = f"would fetch {counted(tally.new, 'call')}"
    skipped = [
        (tally.done, "done earlier"),
        (tally.duplicates, "duplicate" if tally.duplicates == 1 else "duplicates"),
        (tally.other_shard, "of other shards"),
    ]
    if rest := [f"{count} {what}" for count, what in skipped if count]:
        said += f"; skipped: {', '.join(rest)}"
    if tally.invalid:
        lines = counted(tally.invalid, "line that names", "lines that name")
        said += f"; {lines} no call (to the failures file, no request)"
    return said

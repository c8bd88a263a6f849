"""Progress you can watch: a live bar on a terminal (tqdm), a concise log line every
``--log-every`` seconds off one (cron, systemd, Kubernetes), and the metrics file.

Everything here reads the run's counters on a timer: nothing is done per call.

The bar and the line say the same things the same way (``Pace``): where the job stands (the
records of its call list dealt with, by this run or earlier ones, of how many, and the job's
events), and this run's pace, from the calls it fetched itself (a call an earlier run did is
skipped in microseconds: counted as work, it would make a resumed run's pace and ETA up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from harvester.clock import Clock, SystemClock
from harvester.input.chunks import count_records
from harvester.logs import counted, event
from harvester.report import metrics
from harvester.settings.shard import Shard
from harvester.stats import RunStats
from harvester.store.files import replace_file
from harvester.threads import DaemonExecutor

TERMINAL_INTERVAL = 0.5
METRICS_INTERVAL = 15.0
# An earlier metrics file is a few kilobytes; more than this is not ours.
METRICS_READ_LIMIT = 1024 * 1024
# The narrowest bar worth drawing: narrower, the fields go first, then the bar (its percentage
# stays).
BAR_MIN = 10


class Progress:
    """Ticks while the run goes on; ``finish`` draws the last state."""

    def __init__(
        self,
        stats: RunStats,
        stream: TextIO,
        *,
        show: bool,
        log_every: float,
        metrics_file: Path | None,
        shard: Shard | None = None,
        total: int | None = None,
        clock: Clock | None = None,
        columns: Callable[[], int] | None = None,
    ) -> None:
        self._stats = stats
        self._stream = stream
        self._show = show
        self._terminal = show and stream.isatty()
        self._log_every = log_every
        self._metrics_file = metrics_file
        self._shard = shard
        self._clock = clock if clock is not None else SystemClock()
        self._columns = columns if columns is not None else terminal_columns(stream)
        # What earlier runs left in the metrics file: kept until this run ends.
        self._last = _previous_runs(metrics_file)
        self._started = self._clock.monotonic()
        if total is not None:
            self.total = total
        self._bar: tqdm[Any] | None = None

    @property
    def total(self) -> int | None:
        """The records the call list holds, once counted (a regular file); None while unknown,
        and for a stream or a window, whose size nobody knows before the end. Kept in the
        run's counters (``RunStats.records``): the summary of a stopped run says what is left."""
        return self._stats.records

    @total.setter
    def total(self, records: int | None) -> None:
        self._stats.records = records

    async def watching(self, work: Awaitable[Any], input_spec: str | None) -> None:
        """Await ``work`` with the ticker beside it, and ``input_spec`` (a regular file only,
        never a stream) counted for the total meanwhile: the count runs on a daemon thread of
        its own, not the default executor, which ``asyncio.run`` joins at exit (a run that ends
        or is stopped before the count of a big gzip file does must not wait for it)."""
        ticker = asyncio.create_task(self.run())
        counting = asyncio.create_task(self._count(input_spec)) if input_spec else None
        try:
            await work
        finally:
            for task in (ticker, counting):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _count(self, input_spec: str) -> None:
        counter = DaemonExecutor("harvester-count")
        try:
            loop = asyncio.get_running_loop()
            self.total = await loop.run_in_executor(counter, count_records, input_spec)
        finally:
            counter.shutdown()

    async def run(self) -> None:
        """Tick until cancelled."""
        interval = TERMINAL_INTERVAL if self._terminal else self._log_every
        if not self._show:
            interval = METRICS_INTERVAL
        since_metrics = 0.0
        while True:
            await self._clock.sleep(interval)
            since_metrics += interval
            if self._terminal:
                self.draw()
            elif self._show:
                self.log_line()
            if self._metrics_file is not None and since_metrics >= METRICS_INTERVAL:
                since_metrics = 0.0
                await self.write_metrics()

    def finish(self, exit_code: int) -> None:
        """The last bar; this run's ``exit_code``, for the metrics written after it (a success
        is an exit 0, nothing less)."""
        if self._bar is not None:
            self.draw()
            self._bar.close()
        self._last = metrics.LastRuns(
            exit_code,
            self._clock.time() if exit_code == 0 else self._last.success,
        )

    async def write_metrics(self) -> None:
        """Replace the metrics file (if any) with the counters as they are; a failure is only
        a warning."""
        if self._metrics_file is None:
            return
        elapsed = self._clock.monotonic() - self._started
        text = metrics.render(self._stats, elapsed, self._last, self._shard)
        try:
            await replace_file(self._metrics_file, text.encode())
        except OSError as exc:
            event(
                logging.WARNING,
                "metrics-error",
                "cannot write %s: %s",
                self._metrics_file,
                exc.strerror,
            )

    def pace(self) -> Pace:
        """Where the job stands and how fast this run goes, as the bar and the line say it."""
        s = self._stats
        elapsed = self._clock.monotonic() - self._started
        done = s.handled()
        # A count that fell short (a list that grew as it was read) is no cap.
        total = max(self.total, done) if self.total is not None else None
        rate = (s.ok + s.failed) / elapsed if elapsed > 0 else 0.0  # this run's own calls
        paused = paused_until(s, self._clock.time())
        eta = None
        if rate > 0 and total is not None and total > done and not paused:
            eta = (total - done) / rate
        # The job's events, as done counts the job's records: earlier runs' and this one's.
        events = s.events_before + s.events
        return Pace(done, total, s.skipped, rate, eta, events, elapsed, paused)

    def draw(self) -> None:
        """Bring the bar up to date with the counters (a tick does it; so can a caller)."""
        s = self._stats
        pace = self.pace()
        width = self._columns()
        # Narrow, the bar says "harvester" no more: the person at the terminal knows.
        short = f"{s.night} (paused until {pace.paused})" if pace.paused else s.night
        names = (f"harvester {short}".rstrip(), short)
        fields = [f"events={pace.events}", f"retries={s.retries}", f"429s={s.rate_limited}"]
        layout = bar_format(width, names, pace, f"failed={s.failed}", fields)
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(
                total=pace.total or None,
                initial=pace.done,
                file=self._stream,
                ncols=width,
                bar_format=layout,
                leave=True,
            )
        bar.total = pace.total or None
        bar.n = pace.done
        bar.ncols = width
        bar.bar_format = layout
        bar.refresh()

    def log_line(self) -> None:
        """Say where the run stands in one log line (a tick off a terminal does it; so can a
        caller)."""
        s = self._stats
        pace = self.pace()
        position = f"{pace.done}/{pace.total}" if pace.total is not None else f"{pace.done}"
        event(
            logging.INFO,
            "progress",
            "progress%s: %s records (%d done earlier) (%.1f calls/s%s), %s, %s, %s, %d failed%s",
            # With nights: the records are all the nights'; the night is where the pass is.
            f" (the pass at night {s.night})" if s.night else "",
            position,
            pace.earlier,
            pace.rate,
            f", ETA {clock_time(pace.eta)}" if pace.eta is not None else "",
            counted(pace.events, "event"),
            counted(s.retries, "retry", "retries"),
            counted(s.rate_limited, "429"),
            s.failed,
            f"; paused until {pace.paused}, as the API asked" if pace.paused else "",
            paused_until=pace.paused,
            night=s.night or None,
            done=pace.done,
            total=pace.total,
            done_earlier=pace.earlier,
            rate=round(pace.rate, 2),
            eta_s=round(pace.eta) if pace.eta is not None else None,
            events=pace.events,
            retries=s.retries,
            rate_limited=s.rate_limited,
            failed=s.failed,
            elapsed_s=round(pace.elapsed, 1),
        )


@dataclass(frozen=True, slots=True)
class Pace:
    """Where the job stands (``done`` records of ``total``, None when unknown; ``earlier`` of
    them done by earlier runs; the job's ``events``) and this run's pace: ``rate``, the calls
    it fetched a second, and ``eta``, the seconds left at that rate (None when unknown, or
    while the API has every request wait: until ``paused``)."""

    done: int
    total: int | None
    earlier: int
    rate: float
    eta: float | None
    events: int
    elapsed: float
    paused: str | None


def clock_time(seconds: float) -> str:
    """``24:04``, ``1:02:03``: a duration as the bar says it (and tqdm does)."""
    return tqdm.format_interval(seconds)


def bar_format(
    width: int, names: tuple[str, str], pace: Pace, failed: str, fields: list[str]
) -> str:
    """The bar's line as a tqdm ``bar_format`` that fits ``width`` columns: a name (the first of
    ``names``, or the second, shorter), the percentage and the bar (when the total is known),
    the records done (of the total), this run's rate, the ETA and ``failed``; then as many of
    ``fields`` as fit, most important first. Too narrow for all that, the fields go first, then
    the long name and the rate's long label, then the bar itself (its percentage stays); what
    still does not fit, tqdm cuts at the width.
    """
    if pace.total:
        count = f" {pace.done}/{pace.total}"
        percent = f" {100 * pace.done / pace.total:3.0f}%"
    else:  # no known total: a count, as tqdm says it without one (no 100% made up)
        count, percent = f" {pace.done} done", ""
    eta = f" ETA {clock_time(pace.eta)}" if pace.eta is not None else ""
    long, short = names
    plans = [(long, " calls/s", fields[:kept]) for kept in range(len(fields), -1, -1)]
    plans += [(short, " calls/s", []), (short, "/s", [])]
    for bar in (True, False) if percent else (False,):
        for name, unit, shown in plans:
            head = (name + percent).lstrip()
            tail = f"{count} {_rate(pace.rate)}{unit}{eta} {failed}"
            tail += "".join(f" {field}" for field in shown)
            # The bar between two rules: ``13%|█████     | 128878/1000000 ...``.
            if bar and width - len(head + tail) - 2 >= BAR_MIN:
                return f"{_literal(head)}|{{bar}}|{_literal(tail)}"
            if not bar and len(head + tail) <= width:
                return _literal(head + tail)
    return _literal(head + tail)


def _rate(rate: float) -> str:
    """Calls a second: whole ones, but for a slow pace."""
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}"


def _literal(text: str) -> str:
    """``text`` as it reads, in a format string."""
    return text.replace("{", "{{").replace("}", "}}")


def terminal_columns(stream: TextIO) -> Callable[[], int]:
    """How wide the terminal of ``stream`` is now (it may be resized as the run goes): its own
    size, else ``COLUMNS``, else 80."""

    def columns() -> int:
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            return shutil.get_terminal_size().columns

    return columns


def paused_until(stats: RunStats, now: float) -> str | None:
    """``HH:MM:SS UTC`` when the API has asked every request to wait past the next second
    after ``now`` (wall time); None when it has not."""
    if stats.paused_until < now + 1:
        return None
    return datetime.fromtimestamp(stats.paused_until, UTC).strftime("%H:%M:%S UTC")


_SAMPLE = re.compile(
    r"^(harvester_last_success_timestamp_seconds|harvester_last_exit_code)(?:\{[^}\n]*\})? (\S+)$",
    re.MULTILINE,
)


def _previous_runs(path: Path | None) -> metrics.LastRuns:
    """What earlier runs wrote of themselves in the metrics file (how the last ended, when one
    last succeeded), so that it survives a run until that run ends; nothing for a file that is
    missing, unreadable or not ours."""
    found: dict[str, float] = {}
    if path is not None and path.is_file():
        try:
            with path.open("rb") as file:
                text = file.read(METRICS_READ_LIMIT).decode(errors="replace")
        except OSError:
            text = ""
        for name, value in _SAMPLE.findall(text):
            with contextlib.suppress(ValueError):  # not a number: not ours, start afresh
                if math.isfinite(number := float(value)):
                    found[name] = number
    code = found.get("harvester_last_exit_code")
    if code == metrics.NOT_ENDED:
        code = None  # a first run that did not end (kill -9): still none has
    success = found.get("harvester_last_success_timestamp_seconds") or None
    return metrics.LastRuns(int(code) if code is not None else None, success)

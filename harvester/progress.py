"""Progress you can watch: a live bar on a terminal (tqdm), a concise log line every
``--log-every`` seconds off one (cron, systemd, Kubernetes), and the metrics file.

Everything here reads the run's counters on a timer: nothing is done per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import math
import os
import re
import stat
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from harvester import metrics
from harvester.chunks import is_stream
from harvester.files import replace_file
from harvester.logs import event
from harvester.shard import Shard
from harvester.stats import RunStats

TERMINAL_INTERVAL = 0.5
METRICS_INTERVAL = 15.0
# An earlier metrics file is a few kilobytes; more than this is not ours.
METRICS_READ_LIMIT = 1024 * 1024


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
    ) -> None:
        self._stats = stats
        self._stream = stream
        self._show = show
        self._terminal = show and stream.isatty()
        self._log_every = log_every
        self._metrics_file = metrics_file
        self._shard = shard
        # What earlier runs left in the metrics file: kept until this run ends.
        self._last = _previous_runs(metrics_file)
        self._started = time.monotonic()
        self.total = total
        self._bar: tqdm[Any] | None = None

    async def run(self) -> None:
        """Tick until cancelled."""
        interval = TERMINAL_INTERVAL if self._terminal else self._log_every
        if not self._show:
            interval = METRICS_INTERVAL
        since_metrics = 0.0
        while True:
            await asyncio.sleep(interval)
            since_metrics += interval
            if self._terminal:
                self.draw()
            elif self._show:
                self._log_line()
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
            time.time() if exit_code == 0 else self._last.success,
        )

    async def write_metrics(self) -> None:
        """Replace the metrics file (if any) with the counters as they are; a failure is only
        a warning."""
        if self._metrics_file is None:
            return
        elapsed = time.monotonic() - self._started
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

    def draw(self) -> None:
        """Bring the bar up to date with the counters (a tick does it; so can a caller)."""
        s = self._stats
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(
                total=self.total,
                unit="call",
                file=self._stream,
                dynamic_ncols=True,
                desc="harvester",
                smoothing=0.05,
                leave=True,
            )
        done = _handled(s)
        bar.total = max(self.total or 0, done) or None
        bar.n = done
        paused = paused_until(s)
        name = f"harvester {s.night}" if s.night else "harvester"
        bar.set_description(f"{name} (paused until {paused})" if paused else name, False)
        bar.set_postfix(
            events=s.events, retries=s.retries, r429=s.rate_limited, failed=s.failed, refresh=False
        )
        bar.refresh()

    def _log_line(self) -> None:
        s = self._stats
        elapsed = time.monotonic() - self._started
        done = _handled(s)
        rate = (s.ok + s.failed) / elapsed if elapsed > 0 else 0.0  # this run's own pace
        total = max(self.total or 0, done)
        paused = paused_until(s)
        eta = (total - done) / rate if rate > 0 and total > done and not paused else None
        event(
            logging.INFO,
            "progress",
            "progress%s: %d/%d records (%d done earlier) (%.1f calls/s%s), %d events, %d retries, "
            "%d 429s, %d failed%s",
            f" (night {s.night})" if s.night else "",
            done,
            total,
            s.skipped,
            rate,
            f", ETA {eta:.0f} s" if eta is not None else "",
            s.events,
            s.retries,
            s.rate_limited,
            s.failed,
            f"; paused until {paused}, as the API asked" if paused else "",
            paused_until=paused,
            night=s.night or None,
            done=done,
            total=total,
            rate=round(rate, 2),
            events=s.events,
            retries=s.retries,
            rate_limited=s.rate_limited,
            failed=s.failed,
            elapsed_s=round(elapsed, 1),
        )


def paused_until(stats: RunStats) -> str | None:
    """``HH:MM:SS UTC`` when the API has asked every request to wait past the next second;
    None when it has not."""
    if stats.paused_until < time.time() + 1:
        return None
    return datetime.fromtimestamp(stats.paused_until, UTC).strftime("%H:%M:%S UTC")


def _handled(stats: RunStats) -> int:
    """Records of the call list dealt with so far, as the total counts them (its lines): the
    calls this run finished, and those done by earlier runs, doubled, or another shard's."""
    return stats.ok + stats.failed + stats.skipped + stats.duplicates + stats.other_shard


def count_records(spec: str | None) -> int | None:
    """About how many records a call list holds (its lines), for the bar; None when unknown.

    Only a regular file is counted: a stream (stdin, a pipe, a FIFO) can be read only once, and
    that once is the harvest's. The file is opened without waiting and looked at before it is
    read, so a FIFO put in its place after ``is_stream`` looked is neither waited for nor read.
    """
    if spec is None or is_stream(spec):
        return None
    path = Path(spec)
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as raw:
            if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
                return None
            stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else raw
            raw.seek(0)
            lines, last = 0, b"\n"
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
            lines += last != b"\n"  # a last line without its newline is a line too
    except (OSError, EOFError, zlib.error):
        return None
    return max(lines - (1 if path.name.lower().removesuffix(".gz").endswith(".csv") else 0), 0)


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

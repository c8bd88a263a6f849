"""Stopping a run on request: SIGINT/SIGTERM, --deadline and --max-duration.

As uvicorn does, the signal handler only sets a flag (an event) that the run watches; calls in
flight get a bounded grace period; a second, different request forces an exit at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from harvester import exits

# The same signal again within this many seconds is the same request to stop: GNU timeout (and
# other wrappers) send it to the process and then to its whole group, microseconds apart.
SAME_SIGNAL_SECONDS = 1.0

log = logging.getLogger("harvester")


class Stopper:
    """SIGINT/SIGTERM: the first asks the run to stop gracefully, another exits at once.

    The handler only sets a flag that the run watches. The same signal again within
    ``SAME_SIGNAL_SECONDS`` is the same request (a wrapper such as GNU timeout signals the
    process and then its group). Exiting at once is safe: nothing uncommitted counts, and the
    next run resumes from the last commit.
    """

    def __init__(
        self,
        grace: float,
        time_allowed: float | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        exit_now: Callable[[int], object] = os._exit,
    ) -> None:
        self.event = asyncio.Event()
        self.signal: int | None = None
        self.deadline_reached = False
        self._grace = grace
        self._time_allowed = time_allowed
        self._signalled_at = 0.0
        self._monotonic = monotonic
        self._exit_now = exit_now

    def install(self) -> None:
        """Handle SIGINT and SIGTERM, and the time allowed, on the running loop."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.on_signal, signum)
        if self._time_allowed is not None:
            loop.call_later(max(self._time_allowed, 0.0), self._on_deadline)

    def _on_deadline(self) -> None:
        if self.event.is_set():
            return
        self.deadline_reached = True
        log.info("deadline reached: finishing calls in flight, then committing")
        self.event.set()

    def on_signal(self, signum: int) -> None:
        """What the signal handler does: ask the run to stop, or exit at once."""
        now = self._monotonic()
        if self.signal is not None:
            if signum == self.signal and now - self._signalled_at < SAME_SIGNAL_SECONDS:
                return  # the same request, delivered twice
            sys.stderr.write("\nharvester: second signal: stopping now (resumable)\n")
            sys.stderr.flush()
            self._exit_now(exits.SIGNAL_BASE + signum)
            return
        self.signal, self._signalled_at = signum, now
        log.info(
            "%s: finishing calls in flight (up to %g s), then committing; "
            "signal again to stop at once",
            signal.Signals(signum).name,
            self._grace,
        )
        self.event.set()

    def hold(self) -> None:
        """Once the run is over, before its loop closes (which would leave SIGINT and SIGTERM
        to Python's defaults while the summary is written): a signal now is one too many,
        whatever came before. It exits at once; what was done is committed."""
        loop = asyncio.get_running_loop()

        def exit_now(signum: int, _frame: object) -> None:
            again = self._monotonic() - self._signalled_at < SAME_SIGNAL_SECONDS
            if signum == self.signal and again:
                return  # the same request, delivered twice
            sys.stderr.write("\nharvester: signal: stopping now (resumable)\n")
            sys.stderr.flush()
            self._exit_now(exits.SIGNAL_BASE + signum)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
            signal.signal(signum, exit_now)

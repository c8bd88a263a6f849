"""Stopping a run on request: SIGINT/SIGTERM, --deadline and --max-duration.

As uvicorn does, the signal handler only sets a flag (an event) that the run watches; calls in
flight get a bounded grace period; a second request forces an exit at once. Every way out after
a signal is an exit with our own code (128 + the signal), never the signal's default action:
the handlers stay ours until the process has decided how it exits (see ``Stopper.hold``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TextIO

from harvester import exits
from harvester.logs import event, is_terminal, release_held
from harvester.store.last_run import record_forced_end

# The same signal again within this many seconds is the same request to stop: GNU timeout (and
# other wrappers) send it to the process and then to its whole group, microseconds apart. A
# person (a second Ctrl-C) or a supervisor that means it is slower than this by far.
SAME_SIGNAL_SECONDS = 0.03

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
        stream: TextIO | None = None,
    ) -> None:
        self.event = asyncio.Event()
        self.signal: int | None = None
        self.deadline_reached = False
        self._grace = grace
        self._time_allowed = time_allowed
        self._signalled_at = 0.0
        self._monotonic = monotonic
        self._exit_now = exit_now
        self._stream = stream  # where the log goes (None: stderr as it is when a signal comes)

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
        self._new_line()
        log.info("deadline reached: finishing calls in flight, then committing")
        self.event.set()

    def on_signal(self, signum: int) -> None:
        """What the signal handler does: ask the run to stop, or exit at once."""
        now = self._monotonic()
        if self.signal is not None:
            if signum == self.signal and now - self._signalled_at < SAME_SIGNAL_SECONDS:
                return  # the same request, delivered twice
            self._stop_now(signum, "second signal")
            return
        self.signal, self._signalled_at = signum, now
        self._new_line()
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
            self._stop_now(signum, "signal")

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
            signal.signal(signum, exit_now)
        # Python's own finalization, after atexit, puts every handler back to the default
        # action, which would end a process already on its way out by the signal itself (no
        # exit code of ours): by then how it exits is decided and its work committed, so a
        # signal is ignored instead. (Registered once, however many runs a process holds.)
        atexit.unregister(_ignore_signals)
        atexit.register(_ignore_signals)

    def _stop_now(self, signum: int, what: str) -> None:
        """Exit at once with 128 + ``signum``, saying so in the log (after what ``--quiet``
        held back: this run does not exit 0, and no summary follows)."""
        self._new_line()
        event(
            logging.WARNING,
            "stopping-now",
            "%s: stopping now (resumable)",
            what,
            signal=signal.Signals(signum).name,
            exit_code=exits.SIGNAL_BASE + signum,
        )
        release_held()
        code = exits.SIGNAL_BASE + signum
        record_forced_end(code, f"stopped at once by a {what}; the next run resumes")
        self._exit_now(code)

    def _new_line(self) -> None:
        """On a terminal, end the line the cursor is on: the terminal echoed ``^C`` there (after
        the bar, say), and what is said of a signal starts a line of its own."""
        stream = self._stream if self._stream is not None else sys.stderr
        if is_terminal(stream):
            stream.write("\n")
            stream.flush()


def _ignore_signals() -> None:
    """At exit: SIGINT and SIGTERM change nothing any more (an ignored signal is left ignored
    by Python's finalization; a handler is not)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)

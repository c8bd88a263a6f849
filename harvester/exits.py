"""Exit codes: how a run ended, in the one number a scheduler acts on. The command exits with
them; the library reports them (``RunStats.exit_code``); a run of several nights exits with the
worst of its nights'."""

from __future__ import annotations

import signal
from typing import Any

OK = 0
FAILURES = 1  # finished; more calls failed than --max-failures allows
USAGE = 2
FATAL_API = 3
OUTPUT = 4
DEADLINE = 5
UNAVAILABLE = 6
EMPTY = 7
INTERNAL = 70  # sysexits' EX_SOFTWARE
RUNNING = 75  # sysexits' EX_TEMPFAIL: another harvester runs this job now
SIGNAL_BASE = 128
SIGINT = SIGNAL_BASE + signal.SIGINT
SIGTERM = SIGNAL_BASE + signal.SIGTERM

# The exit code of each way a run can fail (``errors.status_of``).
OF_STATUS = {
    "already-running": RUNNING,
    "usage-error": USAGE,
    "api-unavailable": UNAVAILABLE,
    "aborted": FATAL_API,
    "output-error": OUTPUT,
    "crashed": INTERNAL,
}

# Worst first: what needs a person before what the next run mends, before what went well.
_SEVERITY = (
    INTERNAL,
    OUTPUT,
    FATAL_API,
    USAGE,
    RUNNING,
    UNAVAILABLE,
    SIGINT,
    SIGTERM,
    DEADLINE,
    FAILURES,
    EMPTY,
    OK,
)


def worst(codes: list[int]) -> int:
    """The worst of ``codes`` (``OK`` for none)."""
    rank = {code: number for number, code in enumerate(_SEVERITY)}
    return min(codes, key=lambda code: rank.get(code, -1), default=OK)


def of_night(entry: dict[str, Any], *, fail_on_empty: bool, stopped: int) -> int:
    """A night's exit code, from its entry in a run's ``nights`` (``harvester.run.nights``):
    ``stopped`` for a night the run was stopped in (by a signal, the deadline)."""
    status = entry["status"]
    if status == "completed":
        if fail_on_empty and not entry["calls"]:
            return EMPTY
        return FAILURES if entry.get("failed_over_limit") else OK
    if status == "stopped":
        return stopped
    return OF_STATUS.get(status, INTERNAL)

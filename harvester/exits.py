"""Exit codes: how a run ended, in the one number a scheduler acts on. The command exits with
them; the library reports them (``RunStats.exit_code``); a run of several nights exits with the
worst of its nights'."""

from __future__ import annotations

import signal
from enum import StrEnum
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


class Status(StrEnum):
    """How a run (or a night of one) ended, as the summary, the ledger and ``status`` say it;
    ``RUNNING`` while it goes on."""

    COMPLETED = "completed"
    STOPPED = "stopped"  # by a signal, or at once by a second one
    DEADLINE = "deadline"  # at --deadline or --max-duration (or a library caller's stop)
    EMPTY = "empty"  # nothing at all to harvest, with --fail-on-empty
    RUNNING = "running"
    ALREADY_RUNNING = "already-running"
    USAGE_ERROR = "usage-error"
    API_UNAVAILABLE = "api-unavailable"
    ABORTED = "aborted"
    OUTPUT_ERROR = "output-error"
    CRASHED = "crashed"


class NightState(StrEnum):
    """Where a night of a nightly job stands before a run takes it on."""

    COMPLETED = "completed"
    UNFINISHED = "unfinished"
    RUNNING = "running"
    NOT_STARTED = "not started"


# The exit code of each way a run can fail (``errors.status_of``).
OF_STATUS = {
    Status.ALREADY_RUNNING: RUNNING,
    Status.USAGE_ERROR: USAGE,
    Status.API_UNAVAILABLE: UNAVAILABLE,
    Status.ABORTED: FATAL_API,
    Status.OUTPUT_ERROR: OUTPUT,
    Status.CRASHED: INTERNAL,
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
    if status == Status.COMPLETED:
        if fail_on_empty and not entry["calls"]:
            return EMPTY
        return FAILURES if entry.get("failed_over_limit") else OK
    if status == Status.STOPPED:
        return stopped
    return OF_STATUS.get(status, INTERNAL)

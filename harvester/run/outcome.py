"""How a run ended: its exit code, its status and, when it did not finish, why. One rule, for
the command (``harvester.cli``) and the library (``harvester.api``) alike."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from harvester import exits
from harvester.errors import FatalApiError, status_of
from harvester.exits import Status
from harvester.settings.config import Settings
from harvester.stats import RunStats


@dataclass(frozen=True, slots=True)
class Outcome:
    """An exit code, the status the summary and the ledger say, and the error (None when the
    run finished)."""

    code: int
    status: Status
    error: str | None = None


def stopped(signum: int | None = None) -> Outcome:
    """A run stopped on request: by ``signum``, or (None) at the deadline, or by a library
    caller's stop, which counts as the deadline does."""
    if signum is not None:
        name = signal.Signals(signum).name
        error = f"stopped by {name}; run the same command again to resume"
        return Outcome(exits.SIGNAL_BASE + signum, Status.STOPPED, error)
    error = "stopped at the deadline; run the same command again to resume"
    return Outcome(exits.DEADLINE, Status.DEADLINE, error)


def of_error(exc: Exception, credentials_from: str) -> Outcome:
    """A run that raised ``exc``: the exit code of its status, and what to say of it."""
    status = status_of(exc)  # the same words as the ledger's record of the run
    error = str(exc)
    if status == Status.CRASHED:  # a bug: its kind is said; the log keeps the traceback
        error = f"internal error: {type(exc).__name__}; run the same command to resume"
    elif isinstance(exc, FatalApiError) and exc.status in (401, 403):
        error += f" (check {credentials_from}, and the user id)"
    return Outcome(exits.OF_STATUS[status], status, error)


def of_run(settings: Settings, stats: RunStats, stop: Outcome | None) -> Outcome:
    """A run that returned: ``stop`` when it was stopped on request (a run of nights marks
    each night it stopped in with it); else how its job stands: nothing at all with
    ``--fail-on-empty``, more failed calls than ``--max-failures`` allows, or done."""
    if stats.nights:
        return _worst_night(settings, stats, stop or stopped())
    if stop is not None:
        return stop
    if not stats.completed:  # a library caller's stop
        return stopped()
    if not stats.job.get("calls") and settings.fail_on_empty:
        source = f"the call list {settings.input}" if settings.input else "the window"
        return Outcome(
            exits.EMPTY, Status.EMPTY, f"{source} holds no call at all (--fail-on-empty)"
        )
    allowed = settings.max_failures.allowed(stats.job.get("calls", 0))
    failed_over = stats.job.get("failed", 0) > allowed
    return Outcome(exits.FAILURES if failed_over else exits.OK, Status.COMPLETED)


def _worst_night(settings: Settings, stats: RunStats, stop: Outcome) -> Outcome:
    """A run of several nights ends as its worst night: each night's exit code (in its entry
    of ``stats.nights``), and the worst's code, status and error."""
    for entry in stats.nights:
        entry["exit_code"] = exits.of_night(
            entry, fail_on_empty=settings.fail_on_empty, stopped=stop.code
        )
        if entry["status"] == Status.STOPPED:
            entry["status"], entry["error"] = stop.status, stop.error
    code = exits.worst([entry["exit_code"] for entry in stats.nights])
    worst = next(entry for entry in stats.nights if entry["exit_code"] == code)
    if code in (exits.OK, exits.FAILURES, exits.EMPTY):
        return Outcome(code, Status.COMPLETED)
    return Outcome(code, worst["status"], worst.get("error"))

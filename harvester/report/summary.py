"""The summary of a run: the JSON document ``--summary`` writes, and its one-line form."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from harvester import __version__
from harvester.exits import Status
from harvester.logs import counted, event, summary_level
from harvester.run.outcome import Outcome
from harvester.settings.config import Settings
from harvester.stats import RunStats

_JOB_KEYS = ("calls", "ok", "failed", "events", "requests", "retries", "rate_limited")

# The statuses of a run stopped on request (a signal, the deadline): the next run goes on.
STOPPED = (Status.STOPPED, Status.DEADLINE)


def summarise(
    settings: Settings, stats: RunStats, ended: Outcome, started_at: datetime, elapsed: float
) -> dict[str, Any]:
    """The summary document of a run that ended as ``ended`` (with its error), said in the log
    as the summary line (at the level of its exit) once the job was opened."""
    summary = summary_document(settings, stats, ended.status, ended.code, started_at, elapsed)
    if ended.error is not None:
        summary["error"] = ended.error
    if stats.job:
        fields = {key: value for key, value in summary.items() if key != "this_run"}
        event(summary_level(ended.code), "summary", "%s", summary_line(summary), **fields)
    return summary


def summary_document(
    settings: Settings,
    stats: RunStats,
    status: str,
    code: int,
    started_at: datetime,
    elapsed: float,
) -> dict[str, Any]:
    """The summary of a run (``--summary``, and the last log line): the whole job's counters,
    this run's, and how it ended."""
    job = stats.job
    return {
        "status": status,
        "exit_code": code,
        "version": __version__,
        **{key: job.get(key, 0) for key in _JOB_KEYS},
        "duplicates": max(job.get("duplicates", 0), stats.duplicates),
        "failures_by_code": job.get("failures_by_code", {}),
        "elapsed_s": job.get("elapsed_s", round(elapsed, 3)),
        "invocations": job.get("invocations", 0),
        "job_completed": bool(job.get("completed", False)),
        "remaining": _remaining(stats, status),
        "this_run": {**stats.as_dict(), "elapsed_s": round(elapsed, 3)},
        "started_at": started_at.isoformat(timespec="seconds"),
        "input": settings.input,
        "window": _window(settings),
        "shard": str(settings.shard) if settings.shard is not None else None,
        "output": stats.files.get("events", str(settings.output)),
        "failures_file": stats.files.get("failures", _failures_path(settings)),
        "calls_output": stats.files.get("calls"),
        **(_nights(settings, stats) if settings.nights else {}),
    }


def _remaining(stats: RunStats, status: str) -> int | None:
    """Records of the call list a stopped run left to the next: known when the list was
    counted (a regular file); None otherwise, and for a run that was not stopped."""
    if status not in STOPPED or stats.records is None:
        return None
    return max(stats.records - stats.handled(), 0)


def _nights(settings: Settings, stats: RunStats) -> dict[str, Any]:
    """A run of nights: how many were asked for, how many are not completed yet, and one
    entry a night (its date, status, exit code and counters)."""
    return {
        "nights": settings.nights,
        "nights_behind": stats.nights_behind,
        "by_night": stats.nights,
    }


def _window(settings: Settings) -> dict[str, str | None] | None:
    window = settings.window
    if window is None:
        return None
    until = None if window.open_end else window.until.isoformat()
    return {"since": window.since.isoformat(), "until": until, "tz": settings.tz}


def _failures_path(settings: Settings) -> str | None:
    return str(settings.failures_path) if settings.output is not None else None


def summary_line(summary: dict[str, Any]) -> str:
    """The summary as one line for the log."""
    run = summary["this_run"]
    line = (
        f"{counted(summary['calls'], 'call')}: {summary['ok']} ok, {summary['failed']} failed; "
        f"{counted(summary['events'], 'event')}; {counted(summary['requests'], 'request')}, "
        f"{counted(summary['retries'], 'retry', 'retries')}, "
        f"{summary['rate_limited']} rate-limited"
    )
    if summary["invocations"] > 1:
        line += (
            f" (over {counted(summary['invocations'], 'run')}; "
            f"this one took on {counted(run['calls'], 'call')})"
        )
    line += f"; {run['elapsed_s']:.1f} s; exit {summary['exit_code']}"
    if summary["status"] in STOPPED:
        # What a stop leaves: said here, since the stop's own line comes before the summary.
        remaining = summary.get("remaining")
        if remaining is not None:
            # The list's lines not reached: blank lines, comments and duplicates among them.
            line += f"; at most {counted(remaining, 'call')} to go, the next run goes on from here"
        else:
            line += "; the next run goes on from here"
    nights = summary.get("by_night")
    if nights:
        line += "; nights: " + ", ".join(f"{n['date']} {n['status']}" for n in nights)
    if summary["failed"]:
        where = "each night's failures file" if nights else summary["failures_file"]
        line += f". Failed calls are listed in {where}"
    return line

"""The counters of one run, shared by the pool and the client, and the summary built from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from harvester import __version__
from harvester.config import Settings
from harvester.logs import counted

_NOT_COUNTERS = (
    "records",
    "events_before",
    "job",
    "completed",
    "files",
    "status",
    "exit_code",
    "paused_until",
    "night",
    "nights_behind",
    "nights",
)


@dataclass(slots=True)
class RunStats:
    """Live counters; ``ok + failed == calls`` once a run has finished (not when it was stopped)."""

    calls: int = 0  # records taken on by this run (not done earlier, not duplicates)
    ok: int = 0
    failed: int = 0
    events: int = 0
    events_before: int = 0  # the job's events written by earlier runs (of the nights taken on)
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    duplicates: int = 0
    invalid: int = 0
    skipped: int = 0  # done in an earlier run of the same job
    listed: int = 0  # calls seen on the call list's pages (a window run)
    undated: int = 0  # listed calls without a usable startTime, so in no window
    other_shard: int = 0  # records left to the other shards
    records: int | None = None  # the call list's records (its lines), once counted; else None
    failures_by_code: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)  # answers by HTTP status
    paused_until: float = 0.0  # the wall time until which the API asked every request to wait
    night: str = ""  # with nights: the one whose calls were handed out last
    nights_behind: int = 0  # with nights: those not completed yet
    nights: list[dict[str, Any]] = field(default_factory=list)  # with nights: one entry each
    completed: bool = False  # every input record has an outcome
    job: dict[str, Any] = field(default_factory=dict)  # the whole job's committed counters
    files: dict[str, str] = field(default_factory=dict)  # the job's files: events, failures, ...
    status: str = ""  # how the run ended, for library callers: completed or stopped
    exit_code: int | None = None  # what `harvester run` would have exited with, once completed

    def count_failure(self, code: str) -> None:
        self.failed += 1
        self.failures_by_code[code] = self.failures_by_code.get(code, 0) + 1

    def handled(self) -> int:
        """Records of the call list dealt with so far, as ``records`` counts them (its lines):
        the calls this run finished, and those done by earlier runs, doubled, or another
        shard's. Every run reads its list from the start, so this is where the job stands."""
        return self.ok + self.failed + self.skipped + self.duplicates + self.other_shard

    def as_dict(self) -> dict[str, Any]:
        """The counters, plus ``unfinished``: calls read but not done when a run was stopped."""
        counters = {k: v for k, v in asdict(self).items() if k not in _NOT_COUNTERS}
        counters["statuses"] = {str(status): n for status, n in sorted(self.statuses.items())}
        return {**counters, "unfinished": self.calls - self.ok - self.failed}


_JOB_KEYS = ("calls", "ok", "failed", "events", "requests", "retries", "rate_limited")

# The statuses of a run stopped on request (a signal, the deadline): the next run goes on.
STOPPED = ("stopped", "deadline")


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

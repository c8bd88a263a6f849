"""``--metrics-file``: the run's counters in Prometheus text format, for node_exporter's
textfile collector; written atomically by ``Progress`` (``files.replace_file``: a reader never
sees half a file)."""

from __future__ import annotations

import re
from typing import NamedTuple

from harvester import __version__
from harvester.settings.shard import Shard
from harvester.stats import RunStats

# harvester_last_exit_code of a job whose first run goes on: no exit code is -1.
NOT_ENDED = -1


class LastRuns(NamedTuple):
    """How the last run that wrote the file ended (None before any has), and when a run last
    succeeded (exit 0; None when none has)."""

    exit_code: int | None = None
    success: float | None = None


def render(stats: RunStats, run_seconds: float, last: LastRuns, shard: Shard | None = None) -> str:
    """The exposition text for the job (``stats.job``), this run (``stats``), and the runs
    before (``last``): what a batch job's metrics should be, gauges of its last run. Every
    series of a ``shard``'s file carries its label."""
    # A shard's file says which it is: the shards of one job may share a textfile collector,
    # which refuses two files with the same series.
    own = f'shard="{shard}"' if shard is not None else ""
    lines: list[str] = []
    for name, text, samples in _gauges(stats, run_seconds, last):
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            inner = ",".join(part for part in (own, labels) if part)
            series = f"{name}{{{inner}}}" if inner else name
            lines.append(f"{series} {_number(value)}")
    return "\n".join(lines) + "\n"


Samples = list[tuple[str, float]]  # (labels without braces, value)


def _gauges(stats: RunStats, run_seconds: float, last: LastRuns) -> list[tuple[str, str, Samples]]:
    """Each family of the file: its name, its help, its samples."""
    job = stats.job
    requests = [(f'status="{status}"', count) for status, count in sorted(stats.statuses.items())]
    return [
        (
            "harvester_calls",
            "Calls of the job by outcome, over every run so far.",
            [('outcome="ok"', job.get("ok", 0)), ('outcome="failed"', job.get("failed", 0))],
        ),
        (
            "harvester_run_calls",
            "Input records of this run by what became of them.",
            [
                ('outcome="ok"', stats.ok),
                ('outcome="failed"', stats.failed),
                ('outcome="skipped"', stats.skipped),
                ('outcome="duplicate"', stats.duplicates),
            ],
        ),
        ("harvester_events", "Events written by the job.", [("", job.get("events", 0))]),
        (
            "harvester_requests",
            "HTTP requests of this run by answer status.",
            requests or [('status="none"', 0)],
        ),
        ("harvester_retries", "Retries of this run.", [("", stats.retries)]),
        ("harvester_rate_limited", "429 answers of this run.", [("", stats.rate_limited)]),
        (
            "harvester_bytes_written",
            "Bytes of output the job has committed.",
            [("", job.get("bytes", 0))],
        ),
        (
            "harvester_run_duration_seconds",
            "How long this run has taken.",
            [("", round(run_seconds, 3))],
        ),
        *_of_the_runs(stats, last),
    ]


def _of_the_runs(stats: RunStats, last: LastRuns) -> list[tuple[str, str, Samples]]:
    """The families of how the job stands over its runs, always there: nights behind, the last
    run's exit code, the last success, the version."""
    exit_code = last.exit_code if last.exit_code is not None else NOT_ENDED
    success = round(last.success, 3) if last.success is not None else 0
    return [
        (
            "harvester_nights_behind",
            "Nights of the job (--nights) not completed yet; 0 for a job of no nights.",
            [("", stats.nights_behind)],
        ),
        (
            "harvester_last_exit_code",
            "The exit code of the last run that wrote this file (0: every call harvested); "
            "-1 while its first run has not ended.",
            [("", exit_code)],
        ),
        (
            "harvester_last_success_timestamp_seconds",
            "When a run last exited 0 (UNIX time); 0 when none has.",
            [("", success)],
        ),
        (
            "harvester_build_info",
            "The version of harvester that wrote this file.",
            [(f'version="{__version__}"', 1)],
        ),
    ]


def refused(previous: str, exit_code: int) -> str:
    """A file of ours (``is_ours``) after a run refused before it opened its job (a settings
    error, an output that cannot be written): only ``harvester_last_exit_code`` changed, so
    that an alert on it fires, and the rest as the last run left it."""
    return _LAST_EXIT.sub(lambda found: f"{found.group(1)} {exit_code}", previous)


def is_ours(text: str) -> bool:
    """True for the text of a metrics file harvester wrote."""
    return text.startswith("# HELP harvester_") and _LAST_EXIT.search(text) is not None


_LAST_EXIT = re.compile(r"^(harvester_last_exit_code(?:\{[^}\n]*\})?) -?\d+$", re.MULTILINE)


def _number(value: float) -> str:
    """A sample's value exactly: whole numbers as integers, others in full (``repr``), as the
    Prometheus text format takes them (``%g`` would round 1795770000 to 1.79577e+09)."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))

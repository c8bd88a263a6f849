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
    job = stats.job
    lines: list[str] = []
    # A shard's file says which it is: the shards of one job may share a textfile collector,
    # which refuses two files with the same series.
    own = f'shard="{shard}"' if shard is not None else ""

    def metric(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            inner = ",".join(part for part in (own, labels.strip("{}")) if part)
            lines.append(
                f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}"
            )

    metric(
        "harvester_calls",
        "gauge",
        "Calls of the job by outcome, over every run so far.",
        [
            ('{outcome="ok"}', job.get("ok", 0)),
            ('{outcome="failed"}', job.get("failed", 0)),
        ],
    )
    metric(
        "harvester_run_calls",
        "gauge",
        "Input records of this run by what became of them.",
        [
            ('{outcome="ok"}', stats.ok),
            ('{outcome="failed"}', stats.failed),
            ('{outcome="skipped"}', stats.skipped),
            ('{outcome="duplicate"}', stats.duplicates),
        ],
    )
    metric("harvester_events", "gauge", "Events written by the job.", [("", job.get("events", 0))])
    metric(
        "harvester_requests",
        "gauge",
        "HTTP requests of this run by answer status.",
        [(f'{{status="{status}"}}', count) for status, count in sorted(stats.statuses.items())]
        or [('{status="none"}', 0)],
    )
    metric("harvester_retries", "gauge", "Retries of this run.", [("", stats.retries)])
    metric(
        "harvester_rate_limited", "gauge", "429 answers of this run.", [("", stats.rate_limited)]
    )
    metric(
        "harvester_bytes_written",
        "gauge",
        "Bytes of output the job has committed.",
        [
            ("", job.get("bytes", 0)),
        ],
    )
    metric(
        "harvester_run_duration_seconds",
        "gauge",
        "How long this run has taken.",
        [
            ("", round(run_seconds, 3)),
        ],
    )
    metric(
        "harvester_nights_behind",
        "gauge",
        "Nights of the job (--nights) not completed yet; 0 for a job of no nights.",
        [("", stats.nights_behind)],
    )
    metric(
        "harvester_last_exit_code",
        "gauge",
        "The exit code of the last run that wrote this file (0: every call harvested); "
        "-1 while its first run has not ended.",
        [("", last.exit_code if last.exit_code is not None else NOT_ENDED)],
    )
    metric(
        "harvester_last_success_timestamp_seconds",
        "gauge",
        "When a run last exited 0 (UNIX time); 0 when none has.",
        [("", round(last.success, 3) if last.success is not None else 0)],
    )
    metric(
        "harvester_build_info",
        "gauge",
        "The version of harvester that wrote this file.",
        [(f'{{version="{__version__}"}}', 1)],
    )
    return "\n".join(lines) + "\n"


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

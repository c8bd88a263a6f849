"""``--metrics-file``: the run's counters in Prometheus text format, for node_exporter's
textfile collector; written atomically by ``Progress`` (``files.replace_file``: a reader never
sees half a file)."""

from __future__ import annotations

from harvester.stats import RunStats


def render(stats: RunStats, run_seconds: float, last_success: float | None) -> str:
    """The exposition text for the job (``stats.job``) and this run (``stats``)."""
    job = stats.job
    lines: list[str] = []

    def metric(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

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
    if stats.nights or stats.nights_behind:
        metric(
            "harvester_nights_behind",
            "gauge",
            "Nights of the job (--nights) not completed yet.",
            [("", stats.nights_behind)],
        )
    if last_success is not None:
        metric(
            "harvester_last_success_timestamp_seconds",
            "gauge",
            "When a run of this job last completed (UNIX time).",
            [("", round(last_success, 3))],
        )
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """A sample's value exactly: whole numbers as integers, others in full (``repr``), as the
    Prometheus text format takes them (``%g`` would round 1795770000 to 1.79577e+09)."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))

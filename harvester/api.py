"""The library entry points: the same job as ``harvester run``, from Python.

::

    import logging
    from harvester import harvest_sync

    logging.basicConfig(level=logging.INFO)  # harvester's log lines go to your handlers
    stats = harvest_sync(yesterday=True, output="out/events-{date}.ndjson.gz", rate=1)
    print(stats.status, stats.exit_code, stats.job["ok"], "calls,", stats.job["failed"], "failed")

Options are the keys of ``config.example.toml``: the flags with underscores, but for
``commit_calls`` (``--commit-every``), ``commit_seconds`` (``--commit-interval``) and
``progress=False`` (``--no-progress``); ``fresh`` and ``config`` are the flags' own. Credentials
and the user id come from the environment (CATAPULT_API_TOKEN, ...) unless given. ``config``
names a TOML file, read first. Errors are raised as ``harvester.errors`` exceptions.

The library logs to the ``harvester`` logger and configures no handler of its own: its records
propagate to whatever the application set up (the root logger's handlers). A run says when it
starts, every ``log_every`` seconds how far it got (unless ``progress=False``), and its summary
as it ends, at INFO; warnings and errors as they come.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harvester import __version__
from harvester.errors import ConfigError
from harvester.exits import Status
from harvester.logs import event
from harvester.report.progress import Progress
from harvester.report.summary import summarise
from harvester.run import job, outcome
from harvester.run.nights import harvest_nights
from harvester.settings.config import Settings
from harvester.settings.load import load_settings
from harvester.stats import RunStats


async def harvest(
    *,
    config: str | Path | None = None,
    fresh: bool = False,
    stop: asyncio.Event | None = None,
    **options: Any,
) -> RunStats:
    """Harvest as ``harvester run`` would (resuming, exactly once); returns the counters, the
    whole job's in ``.job`` (``calls``, ``ok``, ``failed``, ``events``...), and how the run
    ended in ``.status`` (completed or stopped) and ``.exit_code`` as the command's, by the
    same rule (``harvester.run.outcome``): 0, 1 when more calls failed than ``max_failures``
    allows, 7 for nothing at all with ``fail_on_empty``, 5 for a run stopped through ``stop``
    (as at a deadline). Set ``stop`` to stop cleanly (what is done is committed). With
    ``nights`` (or ``yesterday``), one entry a night in ``.nights``, each with its
    ``exit_code``, and ``.exit_code`` the worst of them (a night stopped counts as 5)."""
    settings = load_settings(options, os.environ, Path(config) if config is not None else None)
    if settings.nights and fresh:
        raise ConfigError("fresh starts one job over; run the night alone with since/until")
    stats = RunStats()
    started_at, started = datetime.now(UTC), time.monotonic()
    event(
        logging.INFO,
        "start",
        "harvester %s: harvest, from Python, pid %d",
        __version__,
        os.getpid(),
        version=__version__,
        command="harvest",
        pid=os.getpid(),
    )
    progress = Progress(
        stats,
        # Never a bar, whatever the process's stderr is: a library's caller reads its log.
        io.StringIO(),
        show=settings.progress and not settings.quiet,
        log_every=settings.log_every,
        metrics_file=settings.metrics_file,
        shard=settings.shard,
    )
    try:
        counted = settings.input if settings.progress else None  # else no second pass
        await progress.watching(_harvest(settings, stats, fresh, stop), counted)
    except Exception as exc:
        ended = outcome.of_error(exc, settings.credentials_from)
        await _summarise(settings, stats, progress, ended, started_at, started)
        raise
    ended = outcome.Outcome(stats.exit_code or 0, Status(stats.status))
    await _summarise(settings, stats, progress, ended, started_at, started)
    return stats


async def _harvest(
    settings: Settings, stats: RunStats, fresh: bool, stop: asyncio.Event | None
) -> None:
    """The job itself; ``stats`` gets its counters, and how it ended: its status and exit code
    as the command's (``harvester.run.outcome``; a stop asked for counts as the deadline)."""
    if settings.nights:
        await harvest_nights(settings, stats=stats, stop=stop)
    else:
        await job.harvest(settings, stats=stats, fresh=fresh, stop=stop)
    ended = outcome.of_run(settings, stats, None)
    stats.exit_code = ended.code
    stats.status = Status.COMPLETED if stats.completed else Status.STOPPED


async def _summarise(
    settings: Settings,
    stats: RunStats,
    progress: Progress,
    ended: outcome.Outcome,
    started_at: datetime,
    started: float,
) -> None:
    """Log how the run ended, as the command's summary line says it, and write the metrics
    file's last state (once the job was opened: a run refused before has no counters, and its
    error is raised to the caller)."""
    progress.finish(ended.code)
    if not stats.job and not stats.nights:
        return
    summarise(settings, stats, ended, started_at, time.monotonic() - started)
    await progress.write_metrics()


def harvest_sync(
    *, config: str | Path | None = None, fresh: bool = False, **options: Any
) -> RunStats:
    """``harvest`` for code that is not async (an Airflow task, a script). Inside a running
    event loop (a notebook, an async framework), ``await harvest(...)`` instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(harvest(config=config, fresh=fresh, **options))
    raise RuntimeError(
        "harvest_sync cannot run inside a running event loop (a notebook, an async framework): "
        "use `await harvester.harvest(...)` there"
    )

"""The library entry points: the same job as ``harvester run``, from Python.

::

    from harvester import harvest_sync

    stats = harvest_sync(yesterday=True, output="out/events-{date}.ndjson.gz", rate=1)
    print(stats.job["ok"], "calls harvested,", stats.job["failed"], "failed")

Options are the settings of ``config.example.toml`` (the flags, with underscores); credentials
and the user id come from the environment (CATAPULT_API_TOKEN, ...) unless given. ``config``
names a TOML file, read first. Errors are raised as ``harvester.errors`` exceptions.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from harvester import exits, job
from harvester.config import load_settings
from harvester.errors import ConfigError
from harvester.nights import harvest_nights
from harvester.stats import RunStats


async def harvest(
    *,
    config: str | Path | None = None,
    fresh: bool = False,
    stop: asyncio.Event | None = None,
    **options: Any,
) -> RunStats:
    """Harvest as ``harvester run`` would (resuming, exactly once); returns the counters, the
    whole job's in ``.job``, with ``status`` (completed or stopped) and, once completed,
    ``exit_code`` as the command's: 0, or 1 when more calls failed than ``max_failures``
    allows. Set ``stop`` to stop cleanly (what is done is committed). With ``nights`` (or
    ``yesterday``), one entry a night in ``.nights``, each with its ``exit_code``, and
    ``exit_code`` the worst of them (a night stopped counts as 5)."""
    settings = load_settings(options, os.environ, Path(config) if config is not None else None)
    if settings.nights:
        if fresh:
            raise ConfigError("fresh starts one job over; run the night alone with since/until")
        stats = await harvest_nights(settings, stop=stop)
        for entry in stats.nights:
            entry["exit_code"] = exits.of_night(
                entry, fail_on_empty=settings.fail_on_empty, stopped=exits.DEADLINE
            )
        stats.exit_code = exits.worst([entry["exit_code"] for entry in stats.nights])
        stats.status = "completed" if stats.completed else "stopped"
        return stats
    stats = await job.harvest(settings, fresh=fresh, stop=stop)
    if stats.completed:
        allowed = settings.max_failures.allowed(stats.job.get("calls", 0))
        stats.status = "completed"
        stats.exit_code = 0 if stats.job.get("failed", 0) <= allowed else 1
    else:
        stats.status = "stopped"  # resumable: call again with the same options
    return stats


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

"""Which nights a nightly job takes on, each a job of its own: its settings, its paths, and
where it stands beside its output.

``--nights N`` (``--yesterday`` is ``--nights 1``) takes the last N complete days in ``--tz``,
today excluded, and every earlier night that a run left unfinished beside the same output: each
night with its own ``{date}`` files and state, the very job ``--since DAY --until DAY+1``
makes. A night's state written by another job (another ``--tz``, shard or user) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from harvester.errors import ConfigError
from harvester.exits import NightState
from harvester.run.job import output_paths
from harvester.settings.config import Settings
from harvester.settings.values import render_path
from harvester.settings.window import Window, night, parse_zone
from harvester.stats import RunStats
from harvester.store.sink import Sink
from harvester.store.status import job_status

# Pages handed to a night ahead of its pool, at most.
AHEAD = 2


@dataclass(eq=False)
class Night:
    """One night of the job: its settings (its window, its paths), and, once it is harvested
    by this run, its sink and what it is fed."""

    day: date
    settings: Settings
    paths: dict[str, Path]
    state: str = NightState.NOT_STARTED  # before this run
    sink: Sink | None = None
    stats: RunStats = field(default_factory=RunStats)  # its job's, for its sink
    feed: asyncio.Queue[Any] = field(default_factory=lambda: asyncio.Queue(AHEAD))
    over: asyncio.Event = field(default_factory=asyncio.Event)  # its pool has ended
    status: str = ""  # how it ended in this run (a ``Status``); "" until it has
    error: str | None = None

    @property
    def window(self) -> Window:
        assert self.settings.window is not None
        return self.settings.window


def night_settings(settings: Settings, day: date) -> Settings:
    """The settings of the job of night ``day``: its window, its paths with ``{date}`` filled;
    what ``--since DAY --until DAY+1`` would make."""
    window = night(day, parse_zone(settings.tz))

    def filled(path: Path | None, name: str) -> Path | None:
        return None if path is None else render_path(name, path, window, None)

    return dataclasses.replace(
        settings,
        nights=None,
        yesterday=False,
        window=window,
        today=None,
        output=filled(settings.output, "output"),
        failures=filled(settings.failures_path, "failures"),
        calls_output=filled(settings.calls_output, "calls_output"),
    )


def plan(settings: Settings) -> list[Night]:
    """The nights of the job, oldest first (see ``nights_of``), each with its own settings and
    its state as its ledger has it (read, not locked)."""
    assert settings.output is not None and settings.nights and settings.today is not None
    nights = []
    for day, output, state in nights_of(settings.output, settings.today, settings.nights):
        own = night_settings(settings, day)
        if state["state"] in (
            NightState.COMPLETED,
            NightState.UNFINISHED,
        ):  # a running one turns this run away
            _same_job(own, output, state)
        nights.append(Night(day, own, output_paths(own, own.window), state["state"]))
    return nights


def _same_job(own: Settings, output: Path, state: dict[str, Any]) -> None:
    """Refuse a night whose state beside ``output`` is another job's: another window (another
    ``--tz``), shard or user. Its date alone would say it is done while the calls of this
    run's window, or shard, are not."""
    assert own.window is not None
    mine = {
        "window": own.window.identity(),
        "shard": str(own.shard) if own.shard else None,
        "user_id": own.user_id,
    }
    theirs = {key: state.get(key) for key in mine}
    if theirs != mine:
        differs = ", ".join(f"{key} {theirs[key]!r}" for key in mine if theirs[key] != mine[key])
        raise ConfigError(
            f"{output} holds the night of another job ({differs}; this run's: "
            f"{', '.join(f'{key} {mine[key]!r}' for key in mine if theirs[key] != mine[key])}). "
            "Run with the same --tz, --shard and user as that job, or choose another --output"
        )


def nights_of(template: Path, today: date, count: int) -> list[tuple[date, Path, dict[str, Any]]]:
    """The nights of the job writing ``template`` (its ``{shard}`` filled): the last ``count``
    days before ``today``, and any earlier night that a run left unfinished beside the same
    files; oldest first, each with its output and where it stands (``night_state``)."""
    recent = {today - timedelta(days=back) for back in range(1, count + 1)}
    head, _, tail = str(template).partition("{date}")
    earlier: set[date] = set()
    for folder in glob.glob(glob.escape(head) + "????-??-??" + glob.escape(tail) + ".state"):
        with contextlib.suppress(ValueError):
            earlier.add(date.fromisoformat(folder[len(head) : len(head) + 10]))
    nights = []
    for day in sorted(recent | {day for day in earlier if day < min(recent)}):
        output = Path(f"{head}{day}{tail}")
        state = night_state(output)
        if day in recent or state["state"] == "unfinished":
            nights.append((day, output, state))
    return nights


def night_state(output: Path) -> dict[str, Any]:
    """Where the night writing ``output`` stands: ``state`` (completed, unfinished, running or
    not started) and, once begun, its job's status (``harvester.store.status.job_status``)."""
    try:
        status = job_status(output)
    except ConfigError:
        return {"state": NightState.NOT_STARTED, "output": str(output)}
    if status["running_pid"]:
        state = NightState.RUNNING
    else:
        state = NightState.COMPLETED if status["completed"] else NightState.UNFINISHED
    return {"state": state, **status}

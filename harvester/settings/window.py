"""The window of a nightly job: ``[since, until)`` from ``--yesterday`` or ``--since/--until``,
in the user's time zone, parsed once when the settings are loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from harvester.errors import ConfigError
from harvester.suggest import did_you_mean


@dataclass(frozen=True, slots=True)
class Window:
    """``[since, until)``, both aware; ``day`` is the start's date in the user's time zone."""

    since: datetime
    until: datetime
    day: date
    open_end: bool = False  # no --until: up to now, whenever "now" is

    def at(self, now: datetime) -> Window:
        """The window of a run starting ``now``: an open end is ``now``."""
        return dataclasses.replace(self, until=now) if self.open_end else self

    def growing(self, now: datetime) -> bool:
        """True when calls may still come into the window after ``now`` (an open end, or an
        end still to come): a run later may find more."""
        return self.open_end or self.until > now

    def identity(self) -> dict[str, str | None]:
        """What makes a re-run the same job: an open end stays open as time passes."""
        until = None if self.open_end else self.until.isoformat()
        return {"since": self.since.isoformat(), "until": until}


def night(day: date, zone: ZoneInfo) -> Window:
    """The window of ``day``, midnight to midnight in ``zone``: what ``--since DAY --until
    DAY+1`` makes, to the letter (the same job)."""
    return Window(
        datetime.combine(day, time(), zone),
        datetime.combine(day + timedelta(days=1), time(), zone),
        day,
    )


def parse_zone(name: str) -> ZoneInfo:
    """The time zone ``name`` names (``UTC``, ``Europe/Berlin``)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        near = did_you_mean(name, available_timezones()) if isinstance(name, str) else ""
        raise ConfigError(
            f"unknown time zone {name!r}{near}: use an IANA name like UTC or Europe/Berlin"
        ) from exc


def parse_window(
    since: str | None, until: str | None, yesterday: bool, zone: ZoneInfo, now: datetime
) -> Window | None:
    """The window the flags ask for, or None when they ask for none."""
    if yesterday:
        if since or until:
            raise ConfigError("give either --yesterday or --since/--until, not both")
        today = now.astimezone(zone).date()
        start = datetime.combine(today - timedelta(days=1), time(), zone)
        return Window(start, datetime.combine(today, time(), zone), start.date())
    if not since and not until:
        return None
    if not since:
        raise ConfigError("--until needs --since")
    start = _instant(since, zone, "--since")
    end = _instant(until, zone, "--until") if until else now
    if end <= start:
        raise ConfigError(f"the window is empty: --until ({end.isoformat()}) is not after --since")
    return Window(start, end, start.astimezone(zone).date(), open_end=not until)


def _instant(text: str, zone: ZoneInfo, flag: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(
            f"{flag} {text!r} is not a date or time; use ISO 8601, e.g. 2026-11-25 or "
            "2026-11-25T00:00:00Z"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)

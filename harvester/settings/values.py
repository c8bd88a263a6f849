"""The settings' values read from text: a call list's format, a failure limit (a count or a
share), a duration, a deadline (a time of day or a moment), and the path templates'
placeholders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo

from harvester.errors import ConfigError
from harvester.settings.shard import Shard
from harvester.settings.window import Window
from harvester.suggest import did_you_mean


class InputFormat(StrEnum):
    """How a call list is written (``--input-format``; by default as its content says)."""

    TEXT = "text"  # one call id a line
    CSV = "csv"  # a header naming the id column
    NDJSON = "ndjson"  # a JSON object a line

    @classmethod
    def parse(cls, value: object) -> InputFormat:
        if isinstance(value, str) and value in _FORMATS:
            return cls(value)
        raise ConfigError(f"must be text, csv or ndjson, not {value!r}")


_FORMATS = frozenset(form.value for form in InputFormat)


@dataclass(frozen=True, slots=True)
class FailureLimit:
    """``--max-failures``: how many failed calls a finished run may have and still exit 0, a
    count (``10``) or a share of the job's calls (``0.5%``)."""

    count: int = 0
    percent: float | None = None

    @classmethod
    def parse(cls, spec: object) -> FailureLimit:
        text = str(spec).strip() if isinstance(spec, str | int) else ""
        try:
            if isinstance(spec, bool) or not text:
                raise ValueError
            if text.endswith("%"):
                percent = float(text[:-1])
                if not 0 <= percent <= 100:
                    raise ValueError
                return cls(percent=percent)
            count = int(text)
            if count < 0:
                raise ValueError
        except ValueError as exc:
            raise ConfigError(
                f"{spec!r} must be a count (10) or a share of the calls (0.5%)"
            ) from exc
        return cls(count=count)

    def allowed(self, calls: int) -> int:
        """Failed calls allowed out of ``calls``."""
        return int(calls * self.percent / 100) if self.percent is not None else self.count

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


def parse_duration(value: object) -> float:
    """``90``, ``90s``, ``15m``, ``5h``, ``1d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = str(value).strip().lower() if isinstance(value, str | int | float) else ""
    unit = units.get(text[-1:], 0)
    try:
        seconds = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        seconds = -1
    if isinstance(value, bool) or not seconds > 0:
        raise ConfigError(f"{value!r} must be a duration such as 90s, 15m or 5h")
    return seconds


def parse_deadline(value: object, now: datetime, zone: ZoneInfo) -> datetime:
    """``--deadline``: a time of day (``06:00``: the next one after ``now``, in the ``tz``
    zone) or an ISO 8601 date and time (a zone-less one in ``tz``)."""
    try:
        if isinstance(value, datetime):
            moment = value
        elif isinstance(value, time):
            moment = _next_time_of_day(value, now, zone)
        elif not isinstance(value, str):
            raise ValueError
        elif "T" in value or len(value) > 8:
            moment = datetime.fromisoformat(value)
        else:
            moment = _next_time_of_day(time.fromisoformat(value), now, zone)
    except ValueError as exc:
        raise ConfigError(
            f"{value!r} must be a time of day (06:00) or a date and time (2026-11-27T06:00:00Z)"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def _next_time_of_day(clock_time: time, now: datetime, zone: ZoneInfo) -> datetime:
    local = now.astimezone(zone)
    moment = datetime.combine(local.date(), clock_time, zone)
    return moment + timedelta(days=1) if moment <= local else moment


def check_placeholders(name: str, text: str) -> None:
    """Refuse a ``{name}`` in a path that harvester does not fill (a typo of ``{date}``)."""
    unknown = sorted(set(_PLACEHOLDER.findall(text)) - {"date", "shard"})
    if unknown:
        raise ConfigError(
            f"{name} {text} holds {{{unknown[0]}}}, which harvester does not fill"
            f"{did_you_mean('{' + unknown[0] + '}', ('{date}', '{shard}'))}: a path may hold "
            "{date} and {shard}"
        )


_PLACEHOLDER = re.compile(r"\{([^{}/]*)\}")


def render_path(
    name: str, path: Path, window: Window | None, shard: Shard | None, *, keep_date: bool = False
) -> Path:
    """``path`` with ``{date}`` (the window's start date) and ``{shard}`` (K of K/N) filled
    (``{date}`` left for each night to fill, with ``keep_date``); ``name`` is the setting's,
    for the error when the window or the shard is missing."""
    text = str(path)
    check_placeholders(name, text)
    if "{date}" in text and not keep_date:
        if window is None:
            raise ConfigError(
                f"{name} {text} holds {{date}}, which needs a window (--nights, --yesterday or "
                "--since)"
            )
        text = text.replace("{date}", window.day.isoformat())
    if "{shard}" in text:
        if shard is None:
            raise ConfigError(f"{name} {text} holds {{shard}}, which needs --shard K/N")
        text = text.replace("{shard}", str(shard.index))
    return Path(text)

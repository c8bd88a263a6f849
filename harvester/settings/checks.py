"""Settings checked: each value given coerced to its setting's type, then the whole checked (the
credentials, the URLs, the ranges, a call list or a window, the paths) and the values made from
others filled in. Every error names the value as it was given and says how to fix it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from harvester.credentials import Secret, check_base_url, check_proxy, proxy_from_environment
from harvester.errors import ConfigError
from harvester.ids import is_user_id
from harvester.settings.config import CONFIG_KEYS, SECRETS, TYPES, Settings, nearest_key
from harvester.settings.shard import Shard
from harvester.settings.values import (
    FailureLimit,
    InputFormat,
    check_placeholders,
    parse_deadline,
    parse_duration,
    render_path,
)
from harvester.settings.window import parse_window, parse_zone

_PATHS = ("output", "failures", "summary", "calls_output", "metrics_file")
# Paths a night of its own must have ({date}); the summary and the metrics file are the run's.
_NIGHT_PATHS = ("output", "failures", "calls_output")


def validate(
    values: dict[str, Any], names: dict[str, str], environ: Mapping[str, str], now: datetime
) -> Settings:
    """The settings ``values`` make, each coerced and the whole checked; ``names`` holds each
    key as it was given (its flag, variable or key in the file), for the errors to say."""
    kwargs = {key: _coerce(key, value, names.get(key, key)) for key, value in values.items()}
    deadline = kwargs.pop("deadline", None)
    settings = Settings(**kwargs)
    for key in _PATHS:
        path = getattr(settings, key)
        if str(path) == "-":
            why = _NOT_STDOUT + (_TAIL if key == "output" else "")
            raise ConfigError(f"{names.get(key, key)} -: {why}")
        if path is not None:
            check_placeholders(names.get(key, key), str(path))
    _check_credentials(settings, names.get("user_id", "user_id"))
    _named(names.get("base_url", "base_url"), check_base_url, settings.base_url)
    proxy = settings.proxy
    if proxy is None and (found := proxy_from_environment(settings.base_url, environ)):
        names["proxy"], proxy = found
    if proxy is not None:
        _named(names.get("proxy", "proxy"), check_proxy, proxy)
    for key, (low, high) in _RANGES.items():
        _check_range(names.get(key, key), getattr(settings, key), low, high)
    if settings.id_column is not None and not settings.id_column.strip():
        raise ConfigError(f"{names.get('id_column', 'id_column')} is empty")
    if settings.log_format not in ("text", "json"):
        name = names.get("log_format", "log_format")
        raise ConfigError(f"{name} must be text or json, not {settings.log_format!r}")
    zone = _named(names.get("tz", "tz"), parse_zone, settings.tz)
    nights = _nights(settings, names)
    window = parse_window(settings.since, settings.until, False, zone, now)
    if (window is not None or nights) and settings.input is not None:
        raise ConfigError(
            "give either a call list (--input PATH, - for stdin) or a window of the API's call "
            "list (--nights N, --yesterday, or --since/--until), not both"
        )
    if nights and window is not None:
        raise ConfigError("give either --nights/--yesterday or --since/--until, not both")
    if nights:
        _check_night_paths(settings, names)
    if deadline is not None:
        deadline = _named(names.get("deadline", "deadline"), parse_deadline, deadline, now, zone)
    credentials_from = " and ".join(names.get(key, key) for key in SECRETS)
    return _render_paths(
        dataclasses.replace(
            settings,
            nights=nights,
            window=window,
            today=now.astimezone(zone).date() if nights else None,
            deadline=deadline,
            credentials_from=credentials_from,
            proxy=proxy,
        ),
        names,
    )


# Why a written file cannot be stdout: what a run writes, it commits and resumes.
_NOT_STDOUT = (
    "harvester writes to files it can resume (each commit is recorded beside the file), not "
    "to stdout. Give a file path"
)
_TAIL = "; to read events as they come, `tail -f` the output (a .ndjson one)"


def _nights(settings: Settings, names: dict[str, str]) -> int | None:
    """How many nights the settings ask for: ``nights``, or 1 for ``yesterday``."""
    if settings.yesterday and settings.nights is not None:
        raise ConfigError("give either --yesterday or --nights N, not both (--yesterday is 1)")
    if settings.nights is not None:
        _check_range(names.get("nights", "nights"), settings.nights, 1, 366)
    return 1 if settings.yesterday else settings.nights


def _check_night_paths(settings: Settings, names: dict[str, str]) -> None:
    """Every night writes files of its own: each path a night writes must hold {date}."""
    for key in _NIGHT_PATHS:
        path = getattr(settings, key)
        if path is not None and str(path).count("{date}") > 1:
            raise ConfigError(
                f"{names.get(key, key)} {path} holds {{date}} more than once: give it once, in "
                "the file's name or in a folder's"
            )
        if path is not None and "{date}" not in str(path):
            raise ConfigError(
                f"{names.get(key, key)} {path} has no {{date}}: with --nights (or --yesterday) "
                "each night is a job of its own, with files of its own. Put {date} in it, "
                "such as events-{date}.ndjson.gz"
            )


_RANGES = {
    "concurrency": (1, 1000),
    "rate": (0, 100_000),
    "max_attempts": (1, 100),
    "max_rate_limited": (1, 100_000),
    "timeout": (0.001, 3600),
    "max_body_mb": (0.001, 4096),
    "max_events": (1, 100_000_000),
    "grace": (0, 3600),
    "commit_calls": (1, 1_000_000),
    "commit_seconds": (0.01, 3600),
    "list_page_size": (1, 1000),
    "log_every": (0.1, 86400),
}


def _check_credentials(settings: Settings, user_id_name: str) -> None:
    if not settings.user_id:
        raise ConfigError(
            "no user id: set CATAPULT_USER_ID, user_id in the config file, or --user-id"
        )
    if not is_user_id(settings.user_id):
        raise ConfigError(
            f"{user_id_name}: {settings.user_id!r} does not look like a Catapult user id "
            "(u-xxxxxxxx)"
        )
    if not settings.api_token or not settings.api_secret:
        raise ConfigError(
            "no API credentials: set CATAPULT_API_TOKEN and CATAPULT_API_SECRET "
            "(or api_token and api_secret in the config file)"
        )


def _render_paths(settings: Settings, names: dict[str, str]) -> Settings:
    """Fill ``{date}`` (the window's start date) and ``{shard}`` (K of K/N) in the paths; with
    nights, the paths of a night keep ``{date}`` for each night to fill."""
    for key in ("summary", "metrics_file"):
        path = getattr(settings, key)
        if settings.nights and path is not None and "{date}" in str(path):
            raise ConfigError(
                f"{names.get(key, key)} {path} holds {{date}}, but with --nights it is the run's, "
                "one for all its nights: give a path without {date}"
            )
    values: dict[str, Any] = {
        key: render_path(
            names.get(key, key),
            path,
            settings.window,
            settings.shard,
            keep_date=bool(settings.nights) and key in _NIGHT_PATHS,
        )
        for key in _PATHS
        if (path := getattr(settings, key)) is not None
    }
    return dataclasses.replace(settings, **values)


# Settings given as text (or a TOML number) and parsed into a value of their own.
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "shard": lambda value: Shard.parse(str(value)),
    "input_format": InputFormat.parse,
    "max_failures": FailureLimit.parse,
    "max_duration": parse_duration,
    "deadline": lambda value: value,  # parsed last: it needs tz and the time of loading
}


def _coerce(key: str, value: Any, name: str) -> Any:
    if key not in CONFIG_KEYS:
        raise ConfigError(f"unknown setting {key!r}{nearest_key(key)}")
    expected = TYPES[key]
    if isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
        return value
    if key in _PARSERS:
        return _named(name, _PARSERS[key], value)
    if key in SECRETS:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string")
        return Secret(value)
    if expected is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a path")
        if not value.strip():
            raise ConfigError(f"{name} is empty: give a file path")
        path = Path(value)
        if path.name in ("", ".", ".."):
            raise ConfigError(f"{name} {value!r} names a folder: give a file path")
        return path
    if expected in (int, float):
        return _number(name, value, expected is int)
    if expected is bool:
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    raise ConfigError(f"{name} must be a string, not {value!r}")


def _named(name: str, parse: Callable[..., Any], *args: Any) -> Any:
    """``parse(*args)``, its error saying which setting was wrong, as the user named it."""
    try:
        return parse(*args)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _number(name: str, value: Any, whole: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    try:
        number = float(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, not {value!r}") from exc
    if not whole:
        return number
    if not number.is_integer():
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    return int(number)


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low:g} and {high:g}, not {value:g}")

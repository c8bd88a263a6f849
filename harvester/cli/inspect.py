"""The commands that look and change nothing: ``status`` (where a job stands) and ``check``
(the settings, and one cheap request)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from harvester import exits
from harvester.cli.parser import config_path, settings_of
from harvester.credentials import redact_url
from harvester.errors import ApiError, ConfigError, FailureCode, FatalApiError, TransientError
from harvester.run.job import ping
from harvester.run.night_plan import nights_of
from harvester.settings.config import CONFIG_KEYS
from harvester.settings.shard import Shard
from harvester.settings.sources import read_toml
from harvester.settings.values import render_path
from harvester.settings.window import parse_window, parse_zone
from harvester.store.status import job_status, night_lines, status_lines

log = logging.getLogger("harvester")
# The proxy's failures, told apart from the API's.
_PROXY_CODES = frozenset(
    {FailureCode.PROXY_UNREACHABLE, FailureCode.PROXY_REFUSED, FailureCode.PROXY_ERROR}
)


def status(args: argparse.Namespace) -> int:
    try:
        _from_config(args)
    except ConfigError as exc:
        log.error("error: %s", exc)
        return exits.USAGE
    if args.output is None:
        log.error("error: status needs the job's output: --output PATH, or --config (exit 2)")
        return exits.USAGE
    try:
        status = _nights_status(args) if args.nights else job_status(_job_output(args))
    except ConfigError as exc:
        log.error("error: %s", exc)
        return exits.USAGE
    if args.json:
        text = orjson.dumps(status, option=orjson.OPT_INDENT_2).decode()
    elif args.nights:
        text = "\n".join(night_lines(status["nights"]))
    else:
        text = "\n".join(status_lines(status))
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # | head: whoever reads has read enough; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return exits.OK


# What finds a job: its output, and what fills the output's {date} and {shard}.
_JOB_KEYS = ("output", "nights", "yesterday", "since", "until", "tz", "shard")
_WINDOW_KEYS = ("nights", "yesterday", "since", "until")


def _from_config(args: argparse.Namespace) -> None:
    """The job the run with the config file (``--config``, else ``HARVESTER_CONFIG``) writes:
    its keys that find a job, where no flag gives them. A window given by a flag sets the
    file's aside, as it does for the run."""
    config = config_path(args)
    if config is None:
        return
    found = read_toml(config)
    window_given = any(getattr(args, key) for key in _WINDOW_KEYS)
    for key in _JOB_KEYS:
        if key in found and not getattr(args, key) and not (key in _WINDOW_KEYS and window_given):
            setattr(args, key, _job_value(key, found[key], config))


def _job_value(key: str, value: Any, config: Path) -> Any:
    """``value`` of ``key`` in the config file, as the flag's would be."""
    kinds: dict[str, type[Any]] = {"output": str, "nights": int, "yesterday": bool}
    kind = kinds.get(key, str)
    if key in ("since", "until") and not isinstance(value, str):
        value = str(value)  # a TOML date-time
    if type(value) is not kind or value == "":
        raise ConfigError(f"{key} in config file {config}: not a {kind.__name__} ({value!r})")
    return Path(value) if key == "output" else value


def _nights_status(args: argparse.Namespace) -> dict[str, Any]:
    """Where each night of a nightly job stands: ``{"nights": [...]}``, oldest first."""
    if args.since or args.until or args.yesterday:
        raise ConfigError("give either --nights N or a window (--yesterday, --since), not both")
    if not 1 <= args.nights <= 366:
        raise ConfigError(f"--nights must be between 1 and 366, not {args.nights}")
    if "{date}" not in str(args.output):
        raise ConfigError(f"--output {args.output} has no {{date}}: give the nightly template")
    zone = parse_zone(args.tz if args.tz is not None else "UTC")
    shard = Shard.parse(args.shard) if args.shard else None
    template = render_path("--output", args.output, None, shard, keep_date=True)
    today = datetime.now(UTC).astimezone(zone).date()
    nights = nights_of(template, today, args.nights)
    return {"nights": [{"date": str(day), **state} for day, _, state in nights]}


def _job_output(args: argparse.Namespace) -> Path:
    """``--output`` with ``{date}`` and ``{shard}`` filled from the window and shard flags, as
    the run that wrote it filled them."""
    zone = parse_zone(args.tz if args.tz is not None else "UTC")
    window = parse_window(args.since, args.until, args.yesterday, zone, datetime.now(UTC))
    shard = Shard.parse(args.shard) if args.shard else None
    return render_path("--output", args.output, window, shard)


def check(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if settings is None:
        return exits.USAGE
    print("effective settings (config file < environment < flags):")
    for name in CONFIG_KEYS:
        value = getattr(settings, name)
        if value is not None:
            shown = redact_url(value) if name in ("base_url", "proxy") else value
            print(f"  {name} = {shown}")  # Secret prints as ***
    try:
        elapsed = asyncio.run(ping(settings))
    except FatalApiError as exc:
        if exc.status in (401, 403):
            log.error(
                "error: the API refused: %s. Check %s (401) and that user id %s is the account "
                "they belong to (403)",
                exc,
                settings.credentials_from,
                settings.user_id,
            )
        else:
            log.error("error: %s", exc)
        return exits.FATAL_API
    except TransientError as exc:
        if exc.code in _PROXY_CODES:  # the proxy's fault, not the API's
            log.error("error: %s", exc.message)
            return exits.UNAVAILABLE
        log.error(
            "error: the API at %s cannot be reached or is down: %s. Check the base URL and the "
            "network, or try again later",
            settings.base_url,
            exc,
        )
        return exits.UNAVAILABLE
    except ApiError as exc:
        log.error("error: the API at %s did not answer as it should: %s", settings.base_url, exc)
        return exits.FATAL_API
    print(f"ok: the API accepted the credentials for {settings.user_id} ({elapsed * 1000:.0f} ms)")
    return exits.OK

"""The command line's parser: the commands and their flags (``harvester.settings.options``),
what is said of a flag it does not know, and the settings the parsed arguments make."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from harvester import __version__
from harvester.errors import ConfigError
from harvester.settings.config import CONFIG_KEYS, Settings
from harvester.settings.load import load_settings
from harvester.settings.options import CHECK, RETRY, RUN, STATUS, add_options, flag_of, path
from harvester.settings.sources import CONFIG_VARIABLE, read_config
from harvester.sim.command import add_sim_command
from harvester.suggest import did_you_mean

log = logging.getLogger("harvester")


def unrecognized(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    """What argparse says of arguments it does not know, with the nearest flag of each."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    said = [
        f"{word}{did_you_mean(word.split('=')[0], flags)}" if word.startswith("-") else word
        for word in unknown
    ]
    return f"unrecognized arguments: {' '.join(said)}"


def parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[Any]]:
    """The command line's parser, and its commands' (by name, in ``.choices``)."""
    # No abbreviations: --fr taken for --fresh would discard a job's progress on a typo.
    top = argparse.ArgumentParser(
        prog="harvester",
        allow_abbrev=False,
        description="Harvest call events from Bandwidth's Catapult voice API, in bulk.",
    )
    top.add_argument("--version", action="version", version=f"harvester {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (brief, description, epilog) in _COMMANDS.items():
        command = commands.add_parser(
            name, allow_abbrev=False, help=brief, description=description, epilog=epilog
        )
        if name == STATUS:
            # Not required by argparse, so that a misspelt --output is said as such.
            command.add_argument(
                "--output", "-o", metavar="PATH", type=path, help="the job's output"
            )
            command.add_argument("--json", action="store_true", help="one JSON document on stdout")
        add_options(command, name)
        if name == RETRY:
            command.add_argument(
                "--include-not-found", action="store_true", help="retry unknown calls (404) too"
            )
    add_sim_command(commands)
    return top, commands


# Each command's help line, description and epilog.
_COMMANDS: dict[str, tuple[str, str, str | None]] = {
    RUN: (
        "harvest the events of every call in a call list",
        "Fetch the events of every call in --input and write them to --output as NDJSON. "
        "Credentials come from CATAPULT_API_TOKEN and CATAPULT_API_SECRET. Settings: config "
        "file < environment < flags (see config.example.toml).",
        "Run the same command again after any interruption: it resumes, and every event lands "
        "exactly once. Exit codes: 0 all harvested; 1 some calls failed (see the failures "
        "file); 2 usage, config or input error; 3 aborted: credentials refused, no access, or "
        "TLS refused; 4 an output file could not be written; 5 stopped at --deadline or "
        "--max-duration (resumable); 6 the API is unreachable or down (resumable: run again "
        "later); 7 the input or window holds no call (with --fail-on-empty); 70 internal error; "
        "75 another harvester runs this job now (nothing changed); 130/143 stopped by "
        "SIGINT/SIGTERM (resumable).",
    ),
    RETRY: (
        "harvest again the calls of an output's failures file that are worth it",
        "Harvest again the calls listed in the failures file of --output (not unknown calls, "
        "unless --include-not-found), append their events to the same output exactly once, "
        "and leave in the failures file only what still fails. An --output holding {date} or "
        "{shard} takes the run's --yesterday/--since and --shard to fill them.",
        "Exit codes as for run.",
    ),
    CHECK: (
        "check the settings and credentials with one cheap request",
        "Validate the settings, print them (secrets redacted), and ask the API for one call of "
        "the user's call list. Exit 0 when that works, 3 when the API refuses the credentials "
        "or the user id, 6 when it cannot be reached or is down, 2 for a settings error.",
        None,
    ),
    STATUS: (
        "where a job stands, without running it",
        "Read the state beside --output and say what the job harvests, how far it got (calls "
        "done, failed by code), how its last run ended, and whether a harvester is running it "
        "now. Changes nothing. Exit 0, or 2 when there is no job there. An --output holding "
        "{date} or {shard} takes the run's --yesterday/--since, --tz and --shard to fill them.",
        None,
    ),
}


def log_format(args: argparse.Namespace) -> str:
    """The log format asked for: the flag's, else the config file's (looked up alone first, so
    that what is wrong in that very file is said in it), else text. A config file that is not
    a regular file (a pipe) is read once, by the settings, and not looked into here."""
    given: str | None = getattr(args, "log_format", None)
    config = config_path(args)
    if given is None and config is not None:
        with contextlib.suppress(Exception):  # whatever is wrong, the settings will say it
            if config.is_file():
                found = read_config(config).get("log_format")
                given = found if found in ("text", "json") else None
    return given or "text"


def config_path(args: argparse.Namespace) -> Path | None:
    """The config file: --config, else HARVESTER_CONFIG, else none."""
    given: Path | None = getattr(args, "config", None)
    if given is None and os.environ.get(CONFIG_VARIABLE):
        return Path(os.environ[CONFIG_VARIABLE])
    return given


def settings_of(args: argparse.Namespace) -> Settings | None:
    """Settings from the config file, the environment and the flags given; None (after saying
    why) when they are not valid."""
    # Only what was given on the command line; None leaves the file's or environment's value.
    flags = {name: getattr(args, name, None) for name in CONFIG_KEYS}
    try:
        return load_settings(flags, os.environ, config_path(args), name=flag_of)
    except ConfigError as exc:
        log.error("error: %s", exc)
        return None

"""The command line's parser: the commands and their flags (``harvester.settings.options``),
their help (``-h``: the flags most runs use, one line each; ``--help``: every flag, grouped),
what is said of a flag it does not know, and the settings the parsed arguments make."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harvester import __version__
from harvester.errors import ConfigError
from harvester.settings.config import CONFIG_KEYS, Settings
from harvester.settings.load import load_settings
from harvester.settings.options import (
    CHECK,
    RETRY,
    RUN,
    STATUS,
    WHERE,
    Groups,
    Option,
    add_options,
    brief_of,
    flag_of,
    path,
)
from harvester.settings.sources import CONFIG_VARIABLE, read_config
from harvester.sim.command import SIM_HELP, add_sim_command
from harvester.suggest import did_you_mean

log = logging.getLogger("harvester")

# The reference pages -h points to.
_SETTINGS_PAGE, _SIM_PAGE = "docs/configuration.md", "docs/simulator.md"


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
        epilog="harvester COMMAND -h: the command's main options, one line each; harvester "
        f"COMMAND --help: all of them, grouped. Every setting: {_SETTINGS_PAGE}; the simulator: "
        f"{_SIM_PAGE}.",
        formatter_class=_Formatter,
    )
    top.add_argument("--version", action="version", version=f"harvester {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    settings = f"Every setting (flag, config key, environment variable, default): {_SETTINGS_PAGE}"
    for name, (brief, description, epilog) in _COMMANDS.items():
        command = commands.add_parser(
            name,
            allow_abbrev=False,
            add_help=False,
            help=brief,
            description=description,
            epilog=epilog,
        )
        add_options(command, name, _OWN_OPTIONS)
        _add_help(command, brief, settings)
    _add_help(add_sim_command(commands), SIM_HELP, f"More on the simulator: {_SIM_PAGE}")
    return top, commands


# Flags that set no setting, of one command each, by the title of their group.
_OWN_OPTIONS: Groups = {
    WHERE: (
        # Not required by argparse, so that a misspelt --output is said as such.
        Option(
            ("--output", "-o"),
            "the job's output",
            (STATUS,),
            metavar="PATH",
            type=path,
            brief=True,
        ),
        Option(
            ("--json",),
            "one JSON document on stdout",
            (STATUS,),
            brief=True,
            extra={"action": "store_true"},
        ),
        Option(
            ("--include-not-found",),
            "retry unknown calls (404) too",
            (RETRY,),
            brief=True,
            extra={"action": "store_true"},
        ),
    ),
}


# Each command's help line, description and epilog.
_COMMANDS: dict[str, tuple[str, str, str | None]] = {
    RUN: (
        "harvest the events of every call of a call list, or of the last nights",
        "Fetch the events of every call in --input, or without it of every call of the nights "
        "or the window the API's call list holds (--nights, --since), and write them to --output "
        "as NDJSON. "
        "Credentials come from CATAPULT_API_TOKEN and CATAPULT_API_SECRET. Settings: config "
        "file < environment < flags (see config.example.toml).",
        "Run the same command again after any interruption: it resumes, and every event lands "
        "exactly once. Exit codes: 0 all harvested; 1 more calls failed than --max-failures "
        "allows (see the failures file, and retry-failed); 2 usage, config or input error, a "
        "damaged ledger, or an output that is not the one the ledger vouches for; 3 aborted: "
        "credentials refused, no access, the proxy refused ours, TLS refused, or a wrong base "
        "URL; 4 an output file could not be written, or was changed under the run; 5 stopped "
        "at --deadline or --max-duration (resumable); 6 the API is unreachable or down "
        "(resumable: run again later); 7 the input or window holds no call (with "
        "--fail-on-empty); 70 internal error; 75 another harvester runs this job now (nothing "
        "changed); 130/143 stopped by SIGINT/SIGTERM (resumable). What to do for each: the "
        "README's exit codes, and docs/failures.md.",
    ),
    RETRY: (
        "harvest again the calls of an output's failures file that are worth it",
        "Harvest again the calls listed in the failures file of --output (not unknown calls, "
        "unless --include-not-found), append their events to the same output exactly once, "
        "and leave in the failures file only what still fails. An --output holding {date} or "
        "{shard} takes the nightly flags (--nights, --yesterday, --since, --until, --tz) and "
        "--shard to fill them, as --config gives them.",
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
        "now. Changes nothing. Exit 0, or 2 when there is no job there. With --config, the job "
        "the run with that config writes (its output, nights, tz and shard, unless flags say "
        "otherwise). An --output holding {date} or {shard} takes the nightly flags (--nights, "
        "--yesterday, --since, --until, --tz) and --shard to fill them.",
        None,
    ),
}


def _add_help(command: argparse.ArgumentParser, about: str, reference: str) -> None:
    """A command's ``-h`` (``short_help``) and ``--help`` (argparse's, every flag in its group),
    and a usage line short enough to head its errors."""
    command.usage = "%(prog)s [options]  (-h: the main options, --help: all)"
    command.formatter_class = _Formatter
    command.add_argument(
        "-h",
        action=_ShortHelp,
        about=about,
        reference=reference,
        help="the main options, one line each",
    )
    command.add_argument("--help", action="help", help="all options, grouped: this help")


class _ShortHelp(argparse.Action):
    """``-h``: print ``short_help`` and exit."""

    def __init__(
        self, option_strings: list[str], dest: str, about: str, reference: str, help: str
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)
        self.about, self.reference = about, reference

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(short_help(parser, self.about, self.reference), end="")
        parser.exit()


def short_help(parser: argparse.ArgumentParser, about: str, reference: str) -> str:
    """What ``-h`` says: the usage, ``about`` (what the command does), the flags most runs use
    (those with a brief: see ``harvester.settings.options.main_flag``), one line each, and
    where the rest is: ``--help`` and ``reference``."""
    rows = [
        (_invocation(action), brief) for action in parser._actions if (brief := brief_of(action))
    ]
    width = min(max(len(flags) for flags, _ in rows), 24)
    lines = [
        f"usage: {parser.prog} [options]",
        "",
        f"{about[0].upper()}{about[1:]}.",
        "",
        "main options:",
        *(f"  {flags:<{width}}  {brief}" for flags, brief in rows),
        "",
        f"All options, grouped: {parser.prog} --help",
        reference,
    ]
    return "\n".join(lines) + "\n"


def _invocation(action: argparse.Action) -> str:
    """A flag's names, the short one first, and what it takes: ``-o, --output PATH``."""
    names = ", ".join(sorted(action.option_strings, key=len))
    if action.nargs == 0:
        return names
    if action.metavar is None and action.choices is not None:
        return f"{names} {{{','.join(map(str, action.choices))}}}"
    return f"{names} {action.metavar or action.dest.upper()}"


class _Formatter(argparse.HelpFormatter):
    """argparse's help, no wider than 100 columns however wide the terminal."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=min(shutil.get_terminal_size().columns, 100) - 2)


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

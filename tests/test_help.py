"""Help as a newcomer reads it: ``-h`` is a screen of the flags most runs use, one line each,
and says where the rest is; ``--help`` is every flag, grouped under titles; a usage error is a
short usage line and what was wrong."""

from __future__ import annotations

import argparse
import re

import pytest

from harvester import __version__
from harvester.cli.parser import parser

from .conftest import run_harvester

COMMANDS = ["run", "retry-failed", "check", "status", "sim"]
REFERENCE = {"sim": "docs/simulator.md"}  # the others': docs/configuration.md
HELP_FLAGS = {"-h", "--help"}
# A line of -h naming flags: two spaces, the flags (with a metavar), two spaces, what it does.
FLAG_LINE = re.compile(r"  (-[\w-]+(?:, -[\w-]+)*)(?: \S+)?  +\S")


def command_parser(command: str) -> argparse.ArgumentParser:
    _, commands = parser()
    found: argparse.ArgumentParser = commands.choices[command]
    return found


def flags_of(command: str) -> set[str]:
    """Every option string ``command``'s parser knows."""
    return {flag for action in command_parser(command)._actions for flag in action.option_strings}


def dash_h(command: str | None) -> str:
    done = run_harvester({}, *([command] if command else []), "-h")
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    return done.stdout.decode()


@pytest.mark.parametrize("command", [*COMMANDS, None])
def test_dash_h_is_one_screen_and_says_where_the_rest_is(command: str | None) -> None:
    text = dash_h(command)
    lines = text.splitlines()
    assert len(lines) <= 30, f"{len(lines)} lines"
    assert [line for line in lines if len(line) > 100] == []
    assert lines[0].startswith("usage: harvester")
    assert "--help" in text
    if command is None:
        assert "harvester COMMAND -h" in " ".join(text.split())
    else:
        assert f"harvester {command} --help" in text
        assert REFERENCE.get(command, "docs/configuration.md") in text


@pytest.mark.parametrize("command", COMMANDS)
def test_dash_h_lists_real_flags_one_line_each(command: str) -> None:
    lines = dash_h(command).splitlines()
    listed = [found.group(1).split(", ") for line in lines if (found := FLAG_LINE.match(line))]
    named = {flag for flags in listed for flag in flags}
    assert named, "some flags are listed"
    assert named - flags_of(command) == set(), "no flag the command does not take"
    assert named & HELP_FLAGS == set(), "-h and --help are said in the pointer at the end"
    # Each listed flag is one line of its own: no line of -h runs on from another.
    assert all(line == "" or not line.startswith("   ") for line in lines)
    if command == "run":
        assert len(listed) >= 10
    if command in ("check", "status"):
        assert named == flags_of(command) - HELP_FLAGS, "a few flags: all of them"


@pytest.mark.parametrize("command", COMMANDS)
def test_long_help_names_every_flag_each_under_a_title(command: str) -> None:
    done = run_harvester({}, command, "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    for flag in flags_of(command):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag
    untitled = ("options", "optional arguments", "positional arguments")
    for group in command_parser(command)._action_groups:
        outside = [
            a.option_strings for a in group._group_actions if set(a.option_strings) - HELP_FLAGS
        ]
        if group.title in untitled:
            assert outside == [], f"{command}: flags in argparse's default group {group.title!r}"
        else:
            assert group.title and outside, f"{command}: a group with a title and flags"


def test_the_groups_are_the_same_wherever_a_flag_is_taken() -> None:
    """--since is "nightly mode" for run, retry-failed and status alike."""

    def group_of(command: str) -> dict[str, str | None]:
        return {
            flag: group.title
            for group in command_parser(command)._action_groups
            for action in group._group_actions
            for flag in action.option_strings
        }

    run = group_of("run")
    for command in ("retry-failed", "check", "status"):
        for flag, title in group_of(command).items():
            if flag in run:
                assert title == run[flag], f"{command} {flag}"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["run", "--concurency", "3"], "--concurency (did you mean --concurrency?)"),
        (["run", "--concurrency", "many"], "argument --concurrency: invalid int value: 'many'"),
        (["sim", "--port", "http"], "argument --port: 'http' is not a port"),
    ],
)
def test_a_usage_error_is_a_short_usage_and_what_was_wrong(args: list[str], said: str) -> None:
    done = run_harvester({}, *args)
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert lines[0] == f"usage: harvester {args[0]} [options]  (-h: the main options, --help: all)"
    assert said in lines[-1] and len(lines) == 2


def test_the_version_is_still_said() -> None:
    done = run_harvester({}, "--version")
    assert done.returncode == 0
    assert done.stdout.decode().strip() == f"harvester {__version__}"

"""The command line's options, declared once: each setting's flag, its help, the group
``--help`` shows it in, its line in ``-h`` (when most runs use it) and the commands that take
it. ``harvester run``, ``retry-failed``, ``check`` and ``status`` are built from this one table,
as Scrapy's commands share ``add_options``; the settings they name are those of
``harvester.settings.config`` (a flag's destination is its config key), so a flag and its key in
``config.example.toml`` cannot drift apart."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from harvester.settings.values import InputFormat

RUN, RETRY, CHECK, STATUS = "run", "retry-failed", "check", "status"
_JOBS = (RUN, RETRY)
_ALL = (RUN, RETRY, CHECK)
_TEMPLATES = (RUN, RETRY, STATUS)  # what fills {date} and {shard} in a path


def path(text: str) -> Path:
    """A file path for argparse: not empty (``Path("")`` would quietly be the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a file path")
    return Path(text)


@dataclass(frozen=True, slots=True)
class Option:
    """One flag: its names, the config key it sets (``dest``), and how argparse reads it."""

    flags: tuple[str, ...]
    help: str
    commands: tuple[str, ...] = _JOBS
    dest: str | None = None  # the config key; by default the flag's name with underscores
    metavar: str | None = None
    type: Any = None
    brief: str | bool = False  # listed in -h, saying this (True: its help)...
    brief_in: tuple[str, ...] | None = None  # ...in these commands' -h only (default: all)
    extra: dict[str, Any] = field(default_factory=dict)  # action, const, choices, required...

    def add_to(self, parser: argparse._ArgumentGroup, command: str) -> None:
        options: dict[str, Any] = {"help": self.help, **self.extra}
        for name in ("dest", "metavar", "type"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        action = parser.add_argument(*self.flags, **options)
        if self.brief and command in (self.brief_in or self.commands):
            main_flag(action, self.brief if isinstance(self.brief, str) else None)


_BRIEF = "brief"  # the attribute of an argparse action that holds its line in -h


def main_flag(action: argparse.Action, brief: str | None = None) -> None:
    """Mark ``action`` as one of the flags most runs use: its command's ``-h`` lists it, saying
    ``brief`` (by default, its help)."""
    setattr(action, _BRIEF, brief or action.help)


def brief_of(action: argparse.Action) -> str | None:
    """What ``-h`` says of ``action``; None when it is not one of the flags most runs use."""
    return cast("str | None", getattr(action, _BRIEF, None))


# The groups of --help: each flag is under the same title in every command's.
WHERE, NIGHTLY = "what to harvest, and where to", "nightly mode"
DESCRIPTIONS = {
    NIGHTLY: "The nights or the window of a nightly job, which run finds in the API's call list "
    "when it has no --input. Paths may hold {date} (a night's or the window's start date) and "
    "{shard} (K of --shard K/N).",
}
Groups = dict[str, tuple[Option, ...]]  # options by the title of their group in --help
_OFF = {"action": "store_const", "const": False}
_ON = {"action": "store_const", "const": True}

GROUPS: Groups = {
    WHERE: (
        Option(
            ("--input", "-i"),
            "call list: one call id a line, a CSV with a callId or id column (separated by , ; tab "
            "or |), or NDJSON, gzipped or not (told by its content, not its name); - for stdin",
            (RUN,),
            metavar="PATH",
            brief="the call list: call ids, CSV or NDJSON, gzipped or not; - for stdin",
        ),
        Option(
            ("--input-format",),
            "the call list's format, when its content may mislead (default: as its first line "
            "says)",
            (RUN,),
            extra={"choices": tuple(InputFormat)},
        ),
        Option(
            ("--id-column",),
            "the CSV column or NDJSON field holding the call ids (default: callId or id; a CSV "
            "header's in any case)",
            (RUN,),
            metavar="NAME",
        ),
        Option(
            ("--output", "-o"),
            "NDJSON file of events, one a line, each with callId (retry-failed: the output of an "
            "earlier run)",
            _JOBS,
            metavar="PATH",
            type=path,
            brief="the events, one JSON object a line (NDJSON)",
        ),
        Option(
            ("--failures",),
            "NDJSON file of calls not harvested (default: <output>.failures.ndjson)",
            (RUN,),
            metavar="PATH",
            type=path,
        ),
        Option(
            ("--summary",),
            "write a JSON summary here at the end (atomically)",
            metavar="PATH",
            type=path,
            brief="write a JSON summary here at the end",
        ),
        Option(
            ("--config",),
            "TOML config file (keys as in config.example.toml)",
            (*_ALL, STATUS),
            metavar="PATH",
            type=path,
            brief=True,
        ),
    ),
    "the API": (
        Option(
            ("--base-url",),
            "API base (default https://api.catapult.inetwork.com; env CATAPULT_BASE_URL)",
            _ALL,
            metavar="URL",
            brief="API base (default https://api.catapult.inetwork.com)",
            brief_in=(CHECK,),
        ),
        Option(
            ("--user-id",),
            "Catapult user id, u-... (env CATAPULT_USER_ID)",
            _ALL,
            metavar="ID",
            brief=True,
            brief_in=(CHECK,),
        ),
        Option(
            ("--proxy",),
            "send requests through this HTTP proxy (default: HTTPS_PROXY / HTTP_PROXY from the "
            "environment, but for hosts in NO_PROXY)",
            _ALL,
            metavar="URL",
            brief="send requests through this HTTP proxy (default: HTTPS_PROXY, HTTP_PROXY)",
            brief_in=(CHECK,),
        ),
        Option(
            ("--timeout",),
            "seconds per request (default 30)",
            _ALL,
            metavar="SECONDS",
            type=float,
            brief=True,
            brief_in=(CHECK,),
        ),
    ),
    "pace and retries": (
        Option(
            ("--concurrency",),
            "requests in flight at most (default 8)",
            metavar="N",
            type=int,
            brief=True,
        ),
        Option(
            ("--rate",),
            "requests per second at most, paced evenly at 97%% of R; 0 = learn the API's limit "
            "from its 429s (default 0)",
            metavar="R",
            type=float,
            brief="requests per second at most (default 0: learn the API's limit)",
        ),
        Option(
            ("--max-attempts",),
            "attempts per call for transient failures (default 5); 429s do not count",
            metavar="N",
            type=int,
        ),
        Option(
            ("--max-rate-limited",),
            "429 answers in a row after which a call is given up (default 100)",
            metavar="N",
            type=int,
        ),
        Option(
            ("--max-body-mb",),
            "an answer larger than this (on the wire or decompressed) fails its call (default 4)",
            metavar="MB",
            type=float,
        ),
        Option(
            ("--max-events",),
            "a call with more events than this fails (default 10000)",
            metavar="N",
            type=int,
        ),
    ),
    "running and stopping": (
        Option(
            ("--fresh",),
            "discard earlier progress of this output; start over",
            (RUN,),
            brief=True,
            extra={"action": "store_true"},
        ),
        Option(
            ("--dry-run", "-n"),
            "read the call list or list the window, say how many calls would be fetched (new, done "
            "earlier, duplicates, other shards, not call ids); fetch no events, write nothing",
            (RUN,),
            brief="say how many calls would be fetched; fetch nothing, write nothing",
            extra={"action": "store_true"},
        ),
        Option(
            ("--grace",),
            "on SIGINT/SIGTERM, seconds to let calls in flight finish (default 10)",
            metavar="SECONDS",
            type=float,
        ),
        Option(
            ("--commit-every",),
            "commit at least every N calls (default 1000)",
            dest="commit_calls",
            metavar="N",
            type=int,
        ),
        Option(
            ("--commit-interval",),
            "commit at least every SECONDS seconds (default 5)",
            dest="commit_seconds",
            metavar="SECONDS",
            type=float,
        ),
        Option(
            ("--max-failures",),
            "exit 1 only when more calls than this failed: a count or a share (default 0)",
            metavar="N|P%",
        ),
        Option(
            ("--fail-on-empty",),
            "exit 7 when the call list or the window holds no call at all (default: exit 0, and "
            "say so)",
            (RUN,),
            extra=_ON,
        ),
        Option(
            ("--max-duration",),
            "stop cleanly after this long (90s, 15m, 5h): commit, exit 5; the next run resumes",
            metavar="DURATION",
        ),
        Option(
            ("--deadline",),
            "stop cleanly at this time of day (06:00, in --tz) or moment (ISO 8601): exit 5",
            metavar="TIME",
            brief="stop cleanly at this time of day (06:00, in --tz): exit 5, resumable",
        ),
        Option(
            ("--shard",),
            "take only shard K of N (0 <= K < N) of the calls, by a stable hash of the id",
            _TEMPLATES,
            metavar="K/N",
            brief="the job's shard K of N (0 <= K < N), which fills {shard} in paths",
            brief_in=(STATUS,),
        ),
    ),
    NIGHTLY: (
        Option(
            ("--nights",),
            "the last N complete days in --tz (today excluded), each not completed yet harvested "
            "into its own {date} files, in one pass over the call list; with any night an earlier "
            "run left unfinished (retry-failed: each begun of them)",
            (RUN, RETRY, STATUS),
            metavar="N",
            type=int,
            brief="the last N complete days in --tz, each with its own {date} files",
        ),
        Option(
            ("--yesterday",),
            "the previous day in --tz (with run: the same as --nights 1)",
            _TEMPLATES,
            brief="the previous day in --tz",
            brief_in=(STATUS,),
            extra=_ON,
        ),
        Option(
            ("--since",),
            "window start, inclusive (ISO 8601; no zone: --tz)",
            _TEMPLATES,
            metavar="TIME",
            brief=True,
        ),
        Option(
            ("--until",),
            "window end, exclusive (default: now)",
            _TEMPLATES,
            metavar="TIME",
            brief=True,
        ),
        Option(
            ("--tz",),
            "time zone of the days (--nights, --yesterday) and of times given without a zone "
            "(default UTC)",
            (*_JOBS, STATUS),
            metavar="ZONE",
            brief="time zone of the days and of times given without a zone (default UTC)",
        ),
        Option(
            ("--calls-output",),
            "also write each listed call's record (NDJSON)",
            (RUN,),
            metavar="PATH",
            type=path,
        ),
        Option(
            ("--list-page-size",),
            "calls per list page (default 1000, the most)",
            (RUN,),
            metavar="N",
            type=int,
        ),
    ),
    "watching": (
        Option(("--no-progress",), "no progress line on stderr", dest="progress", extra=_OFF),
        Option(
            ("--quiet", "-q"),
            "say nothing when the run exits 0; when it does not, its warnings, errors and summary "
            "(for cron, which mails whatever a job says)",
            brief="say nothing when the run exits 0 (for cron)",
            extra=_ON,
        ),
        Option(
            ("--verbose", "-v"),
            "log every retry and failure",
            _ALL,
            brief=True,
            extra={"action": "store_true"},
        ),
        Option(
            ("--log-format",),
            "log lines as text or JSON (default text)",
            extra={"choices": ("text", "json")},
        ),
        Option(
            ("--log-every",),
            "off a terminal, a progress log line this often (default 30)",
            metavar="SECONDS",
            type=float,
        ),
        Option(
            ("--metrics-file",),
            "keep Prometheus metrics here (node_exporter textfile collector)",
            metavar="PATH",
            type=path,
            brief=True,
        ),
    ),
}
OPTIONS = tuple(option for options in GROUPS.values() for option in options)


def add_options(parser: argparse.ArgumentParser, command: str, own: Groups) -> None:
    """Add every option ``command`` takes to its parser, each in its group of ``GROUPS``;
    ``own``: more of them, that set no setting, by the title of the group they go in."""
    for title, options in GROUPS.items():
        taken = [o for o in (*options, *own.get(title, ())) if command in o.commands]
        if taken:
            group = parser.add_argument_group(title, DESCRIPTIONS.get(title))
            for option in taken:
                option.add_to(group, command)


def flag_of(key: str) -> str:
    """The flag that sets config key ``key`` (the key itself when no flag does)."""
    for option in OPTIONS:
        if (option.dest or option.flags[0].removeprefix("--").replace("-", "_")) == key:
            return option.flags[0]
    return key


def key_of_flag(flag: str) -> str | None:
    """The config key flag ``flag`` sets, if it sets one under another name."""
    for option in OPTIONS:
        if flag in option.flags and option.dest is not None:
            return option.dest
    return None

"""The command line: parses, runs, reports. No harvesting logic lives here.

Exit codes of ``harvester run``:
  0 every call harvested; 1 finished, some calls in the failures file;
  2 usage, config or input error; 3 aborted by a fatal API answer (401/403, TLS);
  4 an output file could not be written; 5 stopped at --deadline / --max-duration (resumable);
  6 the API is unreachable or down (resumable: nothing is lost); 70 an internal error (a bug);
  130 / 143 stopped by SIGINT / SIGTERM (resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harvester import __version__, logs
from harvester.config import (
    Settings,
    failures_allowed,
    load_settings,
    parse_duration,
    seconds_until,
)
from harvester.errors import (
    ApiError,
    ApiUnavailable,
    ConfigError,
    FatalApiError,
    InputError,
    OutputError,
    TransientError,
)
from harvester.logs import event
from harvester.pool import harvest, ping, retry_failed
from harvester.progress import Progress, count_records
from harvester.stats import RunStats, write_json_atomically

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_FATAL_API = 3
EXIT_OUTPUT = 4
EXIT_DEADLINE = 5
EXIT_UNAVAILABLE = 6
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE
EXIT_SIGNAL_BASE = 128
# The same signal again within this many seconds is the same request to stop: GNU timeout (and
# other wrappers) send it to the process and then to its whole group, microseconds apart.
SAME_SIGNAL_SECONDS = 1.0

log = logging.getLogger("harvester")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harvester`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    logs.configure("text", getattr(args, "verbose", False))
    if args.command in ("run", "retry-failed"):
        _steady_memory()
        return _run(args)
    if args.command == "sim":
        return _sim(args)
    if args.command == "check":
        return _check(args)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _steady_memory() -> None:
    """Keep a long run's memory flat.

    glibc raises its mmap threshold each time a big block is freed; after that, the commit
    buffers (a megabyte or so each) come from the heap, fragment it, and the resident size
    creeps up over a long run (about 30% over 300,000 calls). A fixed threshold keeps big
    buffers in mmap, returned whole when freed (bench/memory.py). Elsewhere: nothing to do.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc (musl, say): its allocator does not do this


_M_MMAP_THRESHOLD = -3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harvester",
        description="Harvest call events from Bandwidth's Catapult voice API, in bulk.",
    )
    parser.add_argument("--version", action="version", version=f"harvester {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="harvest the events of every call in a call list",
        description="Fetch the events of every call in --input and write them to --output as "
        "NDJSON. Credentials come from CATAPULT_API_TOKEN and CATAPULT_API_SECRET. "
        "Settings: config file < environment < flags (see config.example.toml).",
        epilog="Run the same command again after any interruption: it resumes, and every event "
        "lands exactly once. Exit codes: 0 all harvested; 1 some calls failed (see the failures "
        "file); 2 usage, config or input error; 3 aborted: credentials refused, no access, or "
        "TLS refused; 4 an output file could not be written; 5 stopped at --deadline or "
        "--max-duration (resumable); 6 the API is unreachable or down (resumable: run again "
        "later); 70 internal error; 130/143 stopped by SIGINT/SIGTERM (resumable).",
    )
    run.add_argument(
        "--input",
        "-i",
        metavar="PATH",
        help="call list: text, .csv, .ndjson/.jsonl, optionally .gz; - for stdin",
    )
    run.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        type=_path,
        help="NDJSON file of events, one a line, each with callId",
    )
    run.add_argument(
        "--failures",
        metavar="PATH",
        type=_path,
        help="NDJSON file of calls not harvested (default: <output>.failures.ndjson)",
    )
    run.add_argument(
        "--summary",
        metavar="PATH",
        type=_path,
        help="write a JSON summary here at the end (atomically)",
    )
    run.add_argument(
        "--config",
        metavar="PATH",
        type=_path,
        help="TOML config file (keys as in config.example.toml)",
    )
    run.add_argument(
        "--base-url",
        metavar="URL",
        help="API base (default https://api.catapult.inetwork.com; env CATAPULT_BASE_URL)",
    )
    run.add_argument(
        "--user-id", metavar="ID", help="Catapult user id, u-... (env CATAPULT_USER_ID)"
    )
    run.add_argument(
        "--concurrency", metavar="N", type=int, help="requests in flight at most (default 8)"
    )
    run.add_argument(
        "--rate",
        metavar="R",
        type=float,
        help="requests per second at most, paced evenly at 97%% of R; 0 = learn the API's "
        "limit from its 429s (default 0)",
    )
    run.add_argument(
        "--max-attempts",
        metavar="N",
        type=int,
        help="attempts per call for transient failures (default 5); 429s do not count",
    )
    run.add_argument(
        "--max-rate-limited",
        metavar="N",
        type=int,
        help="429 answers in a row after which a call is given up (default 100)",
    )
    run.add_argument(
        "--timeout", metavar="SECONDS", type=float, help="seconds per request (default 30)"
    )
    run.add_argument(
        "--max-body-mb",
        metavar="MB",
        type=float,
        help="an answer larger than this (on the wire or decompressed) fails its call (default 4)",
    )
    run.add_argument(
        "--max-events",
        metavar="N",
        type=int,
        help="a call with more events than this fails (default 10000)",
    )
    run.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        help="no progress line on stderr",
    )
    run.add_argument(
        "--fresh", action="store_true", help="discard earlier progress of this output; start over"
    )
    run.add_argument(
        "--grace",
        metavar="SECONDS",
        type=float,
        help="on SIGINT/SIGTERM, seconds to let calls in flight finish (default 10)",
    )
    run.add_argument(
        "--commit-every",
        dest="commit_calls",
        metavar="N",
        type=int,
        help="commit at least every N calls (default 1000)",
    )
    run.add_argument(
        "--commit-interval",
        dest="commit_seconds",
        metavar="SECONDS",
        type=float,
        help="commit at least every SECONDS seconds (default 5)",
    )
    window = run.add_argument_group(
        "nightly mode",
        "Without --input, list the API's calls of a time window (newest first, stopping once "
        "past the window) and harvest those. Paths may hold {date} (the window's start date) "
        "and {shard} (K of --shard K/N).",
    )
    window.add_argument(
        "--yesterday", action="store_const", const=True, help="the previous day in --tz"
    )
    window.add_argument(
        "--since", metavar="TIME", help="window start, inclusive (ISO 8601; no zone: --tz)"
    )
    window.add_argument("--until", metavar="TIME", help="window end, exclusive (default: now)")
    window.add_argument(
        "--tz", metavar="ZONE", help="time zone of --yesterday and of zone-less times (default UTC)"
    )
    window.add_argument(
        "--calls-output",
        metavar="PATH",
        type=_path,
        help="also write each listed call's record (NDJSON)",
    )
    window.add_argument(
        "--list-page-size",
        metavar="N",
        type=int,
        help="calls per list page (default 1000, the most)",
    )
    run.add_argument(
        "--max-failures",
        metavar="N|P%",
        help="exit 1 only when more calls than this failed: a count or a share (default 0)",
    )
    run.add_argument(
        "--max-duration",
        metavar="DURATION",
        help="stop cleanly after this long (90s, 15m, 5h): commit, exit 5; the next run resumes",
    )
    run.add_argument(
        "--deadline",
        metavar="TIME",
        help="stop cleanly at this time of day (06:00, in --tz) or moment (ISO 8601): exit 5",
    )
    run.add_argument(
        "--shard",
        metavar="K/N",
        help="take only shard K of N (0 <= K < N) of the calls, by a stable hash of the id",
    )
    run.add_argument("--verbose", "-v", action="store_true", help="log every retry and failure")
    run.add_argument(
        "--log-format", choices=("text", "json"), help="log lines as text or JSON (default text)"
    )
    run.add_argument(
        "--log-every",
        metavar="SECONDS",
        type=float,
        help="off a terminal, a progress log line this often (default 30)",
    )
    run.add_argument(
        "--metrics-file",
        metavar="PATH",
        type=_path,
        help="keep Prometheus metrics here (node_exporter textfile collector)",
    )

    again = commands.add_parser(
        "retry-failed",
        help="harvest again the calls of an output's failures file that are worth it",
        description="Harvest again the calls listed in the failures file of --output (not "
        "unknown calls, unless --include-not-found), append their events to the same output "
        "exactly once, and leave in the failures file only what still fails.",
        epilog="Exit codes as for run.",
    )
    again.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        type=_path,
        required=True,
        help="the output of an earlier run",
    )
    again.add_argument(
        "--include-not-found", action="store_true", help="retry unknown calls (404) too"
    )
    for flag, kind, text in (
        ("--config", _path, "TOML config file"),
        ("--base-url", str, "API base (env CATAPULT_BASE_URL)"),
        ("--user-id", str, "Catapult user id (env CATAPULT_USER_ID)"),
        ("--summary", _path, "write a JSON summary here at the end"),
        ("--concurrency", int, "requests in flight at most (default 8)"),
        ("--rate", float, "requests per second at most; 0 = learn the API's limit"),
        ("--max-attempts", int, "attempts per call for transient failures (default 5)"),
        ("--max-rate-limited", int, "429 answers in a row after which a call is given up"),
        ("--timeout", float, "seconds per request (default 30)"),
        ("--max-body-mb", float, "an answer larger than this fails its call (default 4)"),
        ("--max-events", int, "a call with more events than this fails (default 10000)"),
        ("--grace", float, "on SIGINT/SIGTERM, seconds to let calls in flight finish"),
        ("--commit-every", int, "commit at least every N calls (default 1000)"),
        ("--commit-interval", float, "commit at least every SECONDS seconds (default 5)"),
        ("--max-failures", str, "exit 1 only when more calls than this failed: N or P%%"),
        ("--max-duration", str, "stop cleanly after this long (90s, 15m, 5h): exit 5"),
        ("--deadline", str, "stop cleanly at this time of day or moment: exit 5"),
        ("--log-format", str, "text or json"),
        ("--log-every", float, "off a terminal, a progress log line this often (default 30)"),
        ("--metrics-file", _path, "keep Prometheus metrics here"),
    ):
        renamed = {"--commit-every": "commit_calls", "--commit-interval": "commit_seconds"}
        dest = renamed.get(flag, flag.removeprefix("--").replace("-", "_"))
        again.add_argument(flag, type=kind, help=text, dest=dest)
    again.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        help="no progress on stderr",
    )
    again.add_argument("--verbose", "-v", action="store_true", help="log every retry and failure")

    check = commands.add_parser(
        "check",
        help="check the settings and credentials with one cheap request",
        description="Validate the settings, print them (secrets redacted), and ask the API for "
        "one call of the user's call list. Exit 0 when that works, 3 when the API refuses the "
        "credentials or the user id, 6 when it cannot be reached or is down, 2 for a settings "
        "error.",
    )
    check.add_argument("--config", metavar="PATH", type=_path, help="TOML config file")
    check.add_argument("--base-url", metavar="URL", help="API base (env CATAPULT_BASE_URL)")
    check.add_argument("--user-id", metavar="ID", help="Catapult user id (env CATAPULT_USER_ID)")
    check.add_argument("--timeout", metavar="SECONDS", type=float, help="seconds for the request")

    sim = commands.add_parser(
        "sim",
        help="serve the bundled Catapult API simulator on loopback",
        description="Serve a stand-in for the Catapult API (events and list-calls endpoints) "
        "with basic auth, a fixed-window rate limit and injectable faults.",
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=_port, default=0, help="port (default 0: a free one)")
    sim.add_argument("--calls", type=int, default=1000, help="calls in the registry (default 1000)")
    sim.add_argument("--seed", type=int, default=7, help="seed of the registry and of faults")
    sim.add_argument(
        "--rate-limit", type=int, default=0, help="requests per window, then 429 (default 0: none)"
    )
    sim.add_argument(
        "--window", type=float, default=1.0, help="rate-limit window in seconds (default 1)"
    )
    sim.add_argument(
        "--limit-kind",
        choices=("fixed", "sliding", "bucket"),
        default="fixed",
        help="fixed windows (Catapult's), a sliding window, or a token bucket (default fixed)",
    )
    sim.add_argument(
        "--burst", type=int, default=0, help="a token bucket's size (default: --rate-limit)"
    )
    sim.add_argument(
        "--limit-schedule",
        metavar="T:N,...",
        default="",
        help="from T seconds after the first request on, the limit is N (e.g. 10:200,30:50)",
    )
    sim.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    sim.add_argument(
        "--events-page-size", type=int, default=0, help="page events with Link headers"
    )
    sim.add_argument("--open-world", action="store_true", help="every well-formed call id exists")
    sim.add_argument(
        "--days", type=float, default=3.0, help="the calls start over the days before today (3)"
    )
    sim.add_argument(
        "--list-cursor", action="store_true", help="call-list next links carry opaque cursors"
    )
    sim.add_argument(
        "--faults-on-list", action="store_true", help="inject --fault faults into the call list too"
    )
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=P",
        help="inject a fault with probability P per request; kinds: "
        "500 502 503 504 reset truncate html slow 429 429-retry-after 429-bare",
    )
    sim.add_argument(
        "--max-faults-per-call",
        type=int,
        default=2,
        help="faults a call sees in a row at most (default 2)",
    )
    sim.add_argument(
        "--faults-between",
        metavar="START:END",
        default="",
        help="inject faults only between these seconds from the first request (e.g. 0:3)",
    )
    sim.add_argument(
        "--fault-reset",
        type=float,
        default=0.5,
        help="seconds ahead an injected 429 announces its reset (default 0.5)",
    )
    sim.add_argument("--ready-file", type=_path, help="write the base URL here once serving")
    sim.add_argument("--ids-file", type=_path, help="write the registry's call ids here")
    return parser


# -- run -------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE

    stats = RunStats()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    status, error = "completed", None
    logs.configure(settings.log_format, args.verbose)
    progress = Progress(
        stats,
        sys.stderr,
        show=settings.progress,
        log_every=settings.log_every,
        metrics_file=settings.metrics_file,
    )
    stopper = _Stopper(settings.grace, _time_allowed(settings))
    if args.command == "retry-failed":
        work = retry_failed(
            settings, include_not_found=args.include_not_found, stats=stats, stop=stopper.event
        )
    else:
        work = harvest(settings, stats=stats, stop=stopper.event, fresh=args.fresh)
    try:
        spec = settings.input if args.command == "run" and settings.progress else None
        _run_async(_supervised(work, progress, stopper, spec))
        if stopper.signal is not None:
            code, status = EXIT_SIGNAL_BASE + stopper.signal, "stopped"
            name = signal.Signals(stopper.signal).name
            error = f"stopped by {name}; run the same command again to resume"
        elif stopper.deadline_reached:
            code, status = EXIT_DEADLINE, "deadline"
            error = "stopped at the deadline; run the same command again to resume"
        else:
            allowed = failures_allowed(settings.max_failures, stats.job.get("calls", 0))
            code = EXIT_OK if stats.job.get("failed", 0) <= allowed else EXIT_FAILURES
    except (InputError, ConfigError) as exc:
        code, status, error = EXIT_USAGE, "usage-error", str(exc)
    except ApiUnavailable as exc:
        code, status, error = EXIT_UNAVAILABLE, "api-unavailable", str(exc)
    except FatalApiError as exc:
        code, status, error = EXIT_FATAL_API, "aborted", str(exc)
        if exc.status in (401, 403):
            error += " (check CATAPULT_API_TOKEN, CATAPULT_API_SECRET and the user id)"
    except OutputError as exc:
        code, status, error = EXIT_OUTPUT, "output-error", str(exc)
    except Exception as exc:  # a bug: say so plainly, keep the traceback for the report
        log.error("internal error, please report it with this log", exc_info=exc)
        code, status = EXIT_INTERNAL, "crashed"
        error = f"internal error: {type(exc).__name__}: {exc}; run the same command to resume"
    if code == EXIT_USAGE and not stats.job:
        # Refused before the job was opened: an earlier run's summary and metrics stay as they
        # were, for whoever reads them.
        log.error("error: %s", error)
        return code
    elapsed = time.monotonic() - started
    progress.finish(stats.completed)
    if error is not None:
        planned = code in (EXIT_DEADLINE, *_SIGNAL_CODES)  # asked for: not an error
        level, prefix = (logging.INFO, "") if planned else (logging.ERROR, "error: ")
        event(level, "error", "%s%s", prefix, error, exit_code=code, status=status)

    summary = _summary(settings, stats, status, code, started_at, elapsed)
    if error is not None:
        summary["error"] = error
    if stats.job:
        fields = {k: v for k, v in summary.items() if k != "this_run"}
        event(logging.INFO, "summary", "%s", _summary_line(summary), **fields)
    if settings.summary is not None:
        try:
            write_json_atomically(settings.summary, summary)
        except OSError as exc:
            log.error("error: cannot write summary %s: %s", settings.summary, exc.strerror)
            return code or EXIT_OUTPUT
    return code


_SIGNAL_CODES = (EXIT_SIGNAL_BASE + signal.SIGINT, EXIT_SIGNAL_BASE + signal.SIGTERM)


def _summary(
    settings: Settings,
    stats: RunStats,
    status: str,
    code: int,
    started_at: datetime,
    elapsed: float,
) -> dict[str, Any]:
    job = stats.job
    return {
        "status": status,
        "exit_code": code,
        **{key: job.get(key, 0) for key in _JOB_KEYS},
        "duplicates": stats.duplicates,
        "failures_by_code": job.get("failures_by_code", {}),
        "elapsed_s": job.get("elapsed_s", round(elapsed, 3)),
        "invocations": job.get("invocations", 0),
        "this_run": {**stats.as_dict(), "elapsed_s": round(elapsed, 3)},
        "started_at": started_at.isoformat(timespec="seconds"),
        "input": settings.input,
        "output": str(settings.output),
        "failures_file": str(settings.failures_path) if settings.output is not None else None,
    }


def _settings(args: argparse.Namespace) -> Settings | None:
    """Settings from the config file, the environment and the flags given; None (after saying
    why) when they are not valid."""
    # Only what was given on the command line; None leaves the file's or environment's value.
    flags = {name: getattr(args, name, None) for name in Settings.__dataclass_fields__}
    try:
        return load_settings(flags, os.environ, args.config)
    except ConfigError as exc:
        log.error("error: %s", exc)
        return None


def _time_allowed(settings: Settings) -> float | None:
    """Seconds this run may take: the sooner of --max-duration and --deadline, if any."""
    limits = []
    if settings.max_duration is not None:
        limits.append(parse_duration(settings.max_duration))
    if settings.deadline is not None:
        limits.append(seconds_until(settings.deadline, datetime.now(UTC), settings.tz))
    return min(limits) if limits else None


_JOB_KEYS = ("calls", "ok", "failed", "events", "requests", "retries", "rate_limited")


class _Stopper:
    """SIGINT/SIGTERM: the first asks the run to stop gracefully, another exits at once.

    The handler only sets a flag that the run watches. The same signal again within
    ``SAME_SIGNAL_SECONDS`` is the same request (a wrapper such as GNU timeout signals the
    process and then its group). Exiting at once is safe: nothing uncommitted counts, and the
    next run resumes from the last commit.
    """

    def __init__(self, grace: float, time_allowed: float | None = None) -> None:
        self.event = asyncio.Event()
        self.signal: int | None = None
        self.deadline_reached = False
        self._grace = grace
        self._time_allowed = time_allowed
        self._signalled_at = 0.0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        if self._time_allowed is not None:
            loop.call_later(max(self._time_allowed, 0.0), self._on_deadline)

    def _on_deadline(self) -> None:
        if self.event.is_set():
            return
        self.deadline_reached = True
        log.info("deadline reached: finishing calls in flight, then committing")
        self.event.set()

    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if self.signal is not None:
            if signum == self.signal and now - self._signalled_at < SAME_SIGNAL_SECONDS:
                return  # the same request, delivered twice
            sys.stderr.write("\nharvester: second signal: stopping now (resumable)\n")
            sys.stderr.flush()
            os._exit(EXIT_SIGNAL_BASE + signum)
        self.signal, self._signalled_at = signum, now
        log.info(
            "%s: finishing calls in flight (up to %g s), then committing; "
            "signal again to stop at once",
            signal.Signals(signum).name,
            self._grace,
        )
        self.event.set()


def _run_async(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` on uvloop where it is installed (a default dependency where it
    builds), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    # libuv aborts the process (an assertion, exit 134) when it closes one of its own files
    # that took the number of a closed stdin, stdout or stderr: asyncio's loop has no such
    # rule, and the run then says what is wrong as usual (a closed stdin with -i -, say).
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            asyncio.run(coroutine)
            return
    uvloop.run(coroutine)


async def _supervised(
    work: Coroutine[Any, Any, Any], progress: Progress, stopper: _Stopper, input_spec: str | None
) -> None:
    """Run ``work`` with signal handling and a progress ticker beside it; ``input_spec``, when
    given, is counted for the progress total meanwhile (a regular file only, never a stream)."""
    stopper.install()
    ticker = asyncio.create_task(progress.run())
    counting = asyncio.create_task(_count(progress, input_spec)) if input_spec else None
    try:
        await work
    finally:
        for task in (ticker, counting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _count(progress: Progress, input_spec: str) -> None:
    progress.total = await asyncio.to_thread(count_records, input_spec)


def _summary_line(summary: dict[str, Any]) -> str:
    run = summary["this_run"]
    line = (
        f"{summary['calls']} calls: {summary['ok']} ok, {summary['failed']} failed; "
        f"{summary['events']} events; {summary['requests']} requests, {summary['retries']} "
        f"retries, {summary['rate_limited']} rate-limited"
    )
    if summary["invocations"] > 1:
        line += f" (over {summary['invocations']} runs; this one took on {run['calls']} calls)"
    line += f"; {run['elapsed_s']:.1f} s"
    if summary["failed"]:
        line += f". Failed calls are listed in {summary['failures_file']}"
    return line


# -- check -----------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    print("effective settings (config file < environment < flags):")
    for name in Settings.__dataclass_fields__:
        value = getattr(settings, name)
        if value is not None:
            print(f"  {name} = {value}")  # Secret prints as ***
    try:
        elapsed = asyncio.run(ping(settings))
    except FatalApiError as exc:
        if exc.status in (401, 403):
            log.error(
                "error: the API refused: %s. Check CATAPULT_API_TOKEN and CATAPULT_API_SECRET "
                "(401) and that user id %s is the account they belong to (403)",
                exc,
                settings.user_id,
            )
        else:
            log.error("error: %s", exc)
        return EXIT_FATAL_API
    except TransientError as exc:
        log.error(
            "error: the API at %s cannot be reached or is down: %s. Check the base URL and the "
            "network, or try again later",
            settings.base_url,
            exc,
        )
        return EXIT_UNAVAILABLE
    except ApiError as exc:
        log.error("error: the API at %s did not answer as it should: %s", settings.base_url, exc)
        return EXIT_FATAL_API
    print(f"ok: the API accepted the credentials for {settings.user_id} ({elapsed * 1000:.0f} ms)")
    return EXIT_OK


# -- sim -------------------------------------------------------------------------------------


def _sim(args: argparse.Namespace) -> int:
    from harvester.sim import FAULT_KINDS, SimConfig, Simulator

    faults: dict[str, float] = {}
    for spec in args.fault:
        kind, _, probability = spec.partition("=")
        if kind not in FAULT_KINDS:
            log.error("error: unknown fault %r; kinds: %s", kind, " ".join(FAULT_KINDS))
            return EXIT_USAGE
        try:
            faults[kind] = float(probability or "0.1")
        except ValueError:
            log.error("error: --fault %s: the probability must be a number", spec)
            return EXIT_USAGE
    config = SimConfig(
        calls=args.calls,
        seed=args.seed,
        rate_limit=args.rate_limit,
        window=args.window,
        latency=args.latency,
        events_page_size=args.events_page_size,
        days=args.days,
        list_cursor=args.list_cursor,
        faults_on_list=args.faults_on_list,
        open_world=args.open_world,
        faults=faults,
        max_faults_per_call=args.max_faults_per_call,
        limit_kind=args.limit_kind,
        burst=args.burst,
        fault_reset=args.fault_reset,
    )
    try:
        config.limit_schedule = {
            float(when): int(limit)
            for when, _, limit in (part.partition(":") for part in args.limit_schedule.split(","))
            if when
        }
        if args.faults_between:
            start, _, end = args.faults_between.partition(":")
            config.faults_from, config.faults_until = float(start), float(end or "inf")
    except ValueError:
        log.error("error: --limit-schedule takes T:N,... and --faults-between START:END")
        return EXIT_USAGE
    simulator = Simulator(config)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        url = await simulator.start(args.host, args.port)
        if args.ids_file is not None:
            args.ids_file.write_text("".join(f"{c}\n" for c in simulator.call_ids()))
        log.info("simulator serving %s", url)
        log.info(
            "use: CATAPULT_BASE_URL=%s CATAPULT_USER_ID=%s "
            "CATAPULT_API_TOKEN=%s CATAPULT_API_SECRET=%s",
            url,
            config.user_id,
            config.token,
            config.secret,
        )
        if args.ready_file is not None:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(url + "\n")
            tmp.replace(args.ready_file)
        try:
            await stop.wait()
        finally:
            await simulator.stop()

    try:
        asyncio.run(serve())
    except OSError as exc:
        log.error("error: cannot serve on %s:%s: %s", args.host, args.port, exc.strerror or exc)
        return EXIT_USAGE
    return EXIT_OK


def _path(text: str) -> Path:
    """A file path for argparse: not empty (``Path("")`` would quietly be the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a file path")
    return Path(text)


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535; 0: a free one)")
    return port

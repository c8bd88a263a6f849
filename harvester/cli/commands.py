"""The command line: parses, runs, reports. No harvesting logic lives here.

Exit codes of ``harvester run``:
  0 every call harvested; 1 finished, some calls in the failures file;
  2 usage, config or input error; 3 aborted by a fatal API answer (401/403, TLS);
  4 an output file could not be written; 5 stopped at --deadline / --max-duration (resumable);
  6 the API is unreachable or down (resumable: nothing is lost); 7 nothing to harvest, with
  --fail-on-empty; 70 an internal error (a bug); 75 another harvester runs this job now (this
  run changed nothing); 130 / 143 stopped by SIGINT / SIGTERM (resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import stat
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from harvester import __version__, exits, logs
from harvester.cli import inspect
from harvester.cli import parser as cli_parser
from harvester.errors import (
    HarvesterError,
    status_of,
)
from harvester.exits import Status
from harvester.logs import event
from harvester.report import metrics
from harvester.report.progress import METRICS_READ_LIMIT, Progress
from harvester.report.summary import summarise
from harvester.run import outcome
from harvester.run.dryrun import Tally, dry_run, dry_run_lines
from harvester.run.job import harvest, retry_failed
from harvester.run.nights import harvest_nights, retry_nights
from harvester.run.stopper import Stopper
from harvester.settings.config import (
    Settings,
)
from harvester.settings.options import RETRY, RUN
from harvester.sim.command import serve_sim
from harvester.stats import RunStats
from harvester.store.files import replace_file

log = logging.getLogger("harvester")

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harvester`` command."""
    parser, commands = cli_parser.parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Said by the command's own parser (its usage, not the top level's), with the flag
        # that was probably meant.
        command = commands.choices.get(args.command, parser) if args.command else parser
        command.error(cli_parser.unrecognized(unknown, command))
    # Errors in the settings are logged as asked, before they are loaded.
    logs.configure(cli_parser.log_format(args), getattr(args, "verbose", False))
    if args.command in ("run", "retry-failed"):
        _steady_memory()
        code = exits.INTERNAL
        try:
            code = _run(args)
        finally:
            if code != exits.OK:  # --quiet held it back for this very case
                logs.release_held()
        return code
    if args.command == "sim":
        return serve_sim(args)
    if args.command == "check":
        return inspect.check(args)
    if args.command == "status":
        return inspect.status(args)
    parser.print_help(sys.stderr)
    return exits.USAGE


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


# -- run -------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    settings = cli_parser.settings_of(args)
    if settings is None:
        return exits.USAGE
    stats = RunStats()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    logs.configure(settings.log_format, args.verbose, settings.quiet)
    if getattr(args, "dry_run", False):
        return _dry_run(settings, args.fresh)
    event(
        logging.INFO,
        "start",
        "harvester %s: %s, pid %d",
        __version__,
        args.command,
        os.getpid(),
        version=__version__,
        command=args.command,
        pid=os.getpid(),
    )
    progress = Progress(
        stats,
        sys.stderr,
        show=settings.progress and not settings.quiet,
        log_every=settings.log_every,
        metrics_file=settings.metrics_file,
        shard=settings.shard,
    )
    stopper = Stopper(settings.grace, settings.time_allowed(started_at))
    if settings.deadline is not None:
        _say_deadline(settings.deadline, started_at)
    ended = _harvest(args, settings, stats, progress, stopper)
    code, error = ended.code, ended.error
    if code in (exits.USAGE, exits.OUTPUT, exits.RUNNING) and not stats.job:
        # Refused before the job was opened: an earlier run's summary stays as it was, and its
        # metrics but for the last exit code (not for 75: another run holds the job and writes
        # them), for whoever reads them.
        event(logging.ERROR, "error", "error: %s (exit %d)", error, code, exit_code=code)
        if code != exits.RUNNING and settings.metrics_file is not None:
            _note_refusal(settings.metrics_file, code, settings)
        return code
    progress.finish(code)
    if settings.metrics_file is not None:
        asyncio.run(progress.write_metrics())
    return _report(settings, stats, ended, started_at, time.monotonic() - started)


def _report(
    settings: Settings,
    stats: RunStats,
    ended: outcome.Outcome,
    started_at: datetime,
    elapsed: float,
) -> int:
    """Say how the run ended (its error, its summary line) and write the summary file; the
    exit code (4 when the summary file cannot be written after a run that exited 0)."""
    code, error = ended.code, ended.error
    if error is not None:
        planned = code in (exits.DEADLINE, *_SIGNAL_CODES)  # asked for: not an error
        level, prefix = (logging.INFO, "") if planned else (logging.ERROR, "error: ")
        name = "stopped" if planned else "error"
        # The exit code is said here when no summary line (which says it) follows.
        end = "" if stats.job else f" (exit {code})"
        event(level, name, "%s%s%s", prefix, error, end, exit_code=code, status=ended.status)
    summary = summarise(settings, stats, ended, started_at, elapsed)
    if settings.summary is not None:
        try:
            document = orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
            asyncio.run(replace_file(settings.summary, document))
        except OSError as exc:
            log.error("error: cannot write summary %s: %s", settings.summary, exc.strerror)
            return code or exits.OUTPUT
    return code


def _note_refusal(path: Path, code: int, settings: Settings) -> None:
    """``harvester_last_exit_code`` of the metrics file set to ``code``: what an alert on a run
    that was refused reads. Only a metrics file of ours is rewritten, a regular file that no
    other path of the run names: the refusal may be about that very path (a device, another
    file of the run), and nothing else may be replaced by it."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return
        with path.open("rb") as file:
            previous = file.read(METRICS_READ_LIMIT).decode(errors="replace")
        others = [settings.output, settings.failures, settings.summary, settings.calls_output]
        if settings.input not in (None, "-"):
            others.append(Path(str(settings.input)))
        if any(other is not None and other.exists() and path.samefile(other) for other in others):
            return
    except OSError:
        return
    if not metrics.is_ours(previous):
        return
    text = metrics.refused(previous, code)
    try:
        asyncio.run(replace_file(path, text.encode()))
    except OSError as exc:
        log.warning("cannot write the metrics file %s: %s", path, exc.strerror)


def _dry_run(settings: Settings, fresh: bool) -> int:
    """``--dry-run``: what the run would do, on stdout; nothing fetched, nothing written. A
    signal stops it at once (exit 130 / 143), its scratch folder removed."""
    if settings.nights and fresh:
        log.error("error: --fresh starts one job over, and --nights holds several (exit 2)")
        return exits.USAGE
    stopper = Stopper(0.0)
    try:
        tallies = _run_async(_dry(settings, fresh, stopper))
    except HarvesterError as exc:
        ended = outcome.of_error(exc, settings.credentials_from)  # as the run would end
        code = ended.code
        event(logging.ERROR, "error", "error: %s (exit %d)", ended.error, code, exit_code=code)
        return code
    if tallies is None:
        assert stopper.signal is not None
        code = outcome.stopped(stopper.signal).code
        log.info("dry run stopped: nothing was fetched or written (exit %d)", code)
        return code
    if settings.log_format == "json":
        document = {"dry_run": True, "jobs": [dataclasses.asdict(t) for t in tallies]}
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
    else:
        text = "\n".join(dry_run_lines(tallies))
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    # A damaged input stops the run there (exit 2): so does its dry run, having said where.
    return exits.USAGE if any(tally.damaged for tally in tallies) else exits.OK


async def _dry(settings: Settings, fresh: bool, stopper: Stopper) -> list[Tally] | None:
    """The dry run, or None once a signal asked it to stop (it is cancelled then: a FIFO's
    open or a long list does not hold it)."""
    stopper.install()
    counting = asyncio.ensure_future(dry_run(settings, fresh=fresh))
    stopping = asyncio.ensure_future(stopper.event.wait())
    try:
        await asyncio.wait([counting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if counting.done():
            return counting.result()
        counting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counting
        return None
    finally:
        stopping.cancel()
        stopper.hold()


def _harvest(
    args: argparse.Namespace,
    settings: Settings,
    stats: RunStats,
    progress: Progress,
    stopper: Stopper,
) -> outcome.Outcome:
    """Run the job; how it ended (``harvester.run.outcome``)."""
    work: Coroutine[Any, Any, RunStats]
    if args.command == RETRY:
        retry = retry_nights if settings.nights else retry_failed
        work = retry(
            settings, include_not_found=args.include_not_found, stats=stats, stop=stopper.event
        )
    elif settings.nights:
        if args.fresh:
            return outcome.Outcome(
                exits.USAGE,
                Status.USAGE_ERROR,
                "--fresh starts one job over, and --nights holds several: to start a night "
                "over, run it alone with --since DAY --until NEXT-DAY --fresh",
            )
        work = harvest_nights(settings, stats=stats, stop=stopper.event)
    else:
        work = harvest(settings, stats=stats, stop=stopper.event, fresh=args.fresh)
    try:
        # Counted for the bar and the log lines (and then what a stopped run's summary says is
        # left); with no progress shown, no second pass over the input.
        spec = settings.input if args.command == RUN and settings.progress else None
        _run_async(_supervised(work, progress, stopper, spec))
    except Exception as exc:
        if status_of(exc) == Status.CRASHED:  # a bug: said plainly, the traceback kept for a report
            log.error("internal error, please report it with this log", exc_info=exc)
        return outcome.of_error(exc, settings.credentials_from)
    asked = stopper.signal is not None or stopper.deadline_reached
    ended = outcome.of_run(settings, stats, outcome.stopped(stopper.signal) if asked else None)
    if ended.status == Status.COMPLETED and not stats.nights and not stats.job.get("calls"):
        source = f"the call list {settings.input}" if settings.input else "the window"
        log.warning("nothing to harvest: %s holds no call at all", source)
    return ended


def _say_deadline(deadline: datetime, now: datetime) -> None:
    """The deadline as the run will keep it: a time of day already past today is tomorrow's."""
    if deadline <= now:
        log.info("deadline %s has passed: the run stops at once", deadline.isoformat())
        return
    local_now = now.astimezone(deadline.tzinfo)
    day = "tomorrow, " if deadline.date() > local_now.date() else ""
    log.info(
        "deadline: %s%s (in %.0f min); the run stops cleanly there, exit 5",
        day,
        deadline.isoformat(timespec="minutes"),
        (deadline - now).total_seconds() / 60,
    )


_SIGNAL_CODES = (exits.SIGINT, exits.SIGTERM)


def _run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on uvloop where it is installed (a default dependency where it
    builds), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    # libuv aborts the process (an assertion, exit 134) when it closes one of its own files
    # that took the number of a closed stdin, stdout or stderr: asyncio's loop has no such
    # rule, and the run then says what is wrong as usual (a closed stdin with -i -, say).
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def _supervised(
    work: Coroutine[Any, Any, Any], progress: Progress, stopper: Stopper, input_spec: str | None
) -> None:
    """Run ``work`` with signal handling and the progress beside it (``Progress.watching``)."""
    stopper.install()
    try:
        await progress.watching(work, input_spec)
    finally:
        stopper.hold()

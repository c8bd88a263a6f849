"""``harvester status``: where a job stands, read from its ledger without running it and
without changing anything (the ledger is opened read-only; the lock is looked at, not taken)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

from harvester import exits
from harvester.errors import ConfigError, OutputError
from harvester.exits import Status
from harvester.input.chunks import count_records
from harvester.logs import counted
from harvester.store.files import differs
from harvester.store.last_run import read_run_record
from harvester.store.ledger import ledger_error, read_only, state_dir
from harvester.store.state import JobState, load_state


def job_status(output: Path) -> dict[str, Any]:
    """The job writing ``output``: what it harvests, how far it got, its last run, and whether
    a harvester is running it now. ``ConfigError`` when there is no job there."""
    folder = state_dir(output)
    ledger = folder / "ledger.sqlite"
    if not ledger.is_file():
        raise ConfigError(f"{output} has no harvester state beside it ({folder}): no job there")
    running_pid = lock_holder(folder / "lock")
    try:
        with contextlib.closing(read_only(ledger, writing=running_pid is not None)) as db:
            state = load_state(db, ledger)
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise
    except sqlite3.Error as exc:  # damaged, or not readable: either way no status to give
        raise ConfigError(str(ledger_error(exc, ledger))) from exc
    if state is None:
        raise ConfigError(f"{output}: its job was begun but nothing was recorded yet")
    identity, totals = state.identity, state.totals
    return {
        "output": identity.get("events_path", str(output)),
        "failures_file": identity.get("failures_path"),
        "input": identity.get("input"),
        "window": identity.get("window"),
        "shard": identity.get("shard"),
        "user_id": identity.get("user_id"),
        **{key: totals[key] for key in ("calls", "ok", "failed", "events", "requests")},
        "failures_by_code": state.failure_codes,
        "completed": state.completed,
        "invocations": state.invocations,
        "elapsed_s": round(state.elapsed_s, 3),
        "input_records": _input_records(identity),
        "last_run": _last_run(state.last_run, read_run_record(folder)),
        "running_pid": running_pid,
        "damaged": _damaged(state),
    }


def _last_run(ledger: object, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last run as recorded: the ledger's record, unless the record file beside it (see
    ``last_run.RunRecord``) holds that same run's end, which a full disk kept from the ledger."""
    last = ledger if isinstance(ledger, dict) else None
    if record is None or last is None:
        return last or record
    same = record.get("invocation") == last.get("invocation") is not None
    if same and last.get("status") == Status.RUNNING and record.get("status") != Status.RUNNING:
        return record
    return last


def _input_records(identity: dict[str, Any]) -> int | None:
    """How many records the job's input holds, when that can be known without harvesting: a
    file of the size the job recorded (the same file; one grown since is counted by the next
    run). None for a stream, a window, or a file that is gone or changed."""
    size, spec = identity.get("size"), identity.get("input")
    if not isinstance(size, int) or not isinstance(spec, str) or spec == "-":
        return None
    try:
        if Path(spec).stat().st_size != size:
            return None
    except OSError:
        return None
    return count_records(spec)


def _damaged(state: JobState) -> dict[str, str]:
    """The job's files that are not what its ledger vouches for, and why."""
    found = {}
    tails = state.tails
    exact = bool(state.changed) or state.clean  # as the next run sees it
    for name, size in state.sizes.items():
        path = state.identity.get(f"{name}_path")
        if not isinstance(path, str):
            continue
        try:
            reason = differs(Path(path), size, tails.get(name), exact=exact)
        except OutputError as exc:
            reason = str(exc)
        if reason is not None:
            found[path] = reason
    return found


def lock_holder(lock: Path) -> int | None:
    """The pid of the harvester holding ``lock`` now, or None when nobody does. Linux lists
    the locks held in /proc/locks: looked up there, the lock is not even touched (a runner
    starting meanwhile is never refused for it); elsewhere, a shared lock is tried and let go."""
    try:
        info = lock.stat()
    except FileNotFoundError:
        return None
    try:
        listed = Path("/proc/locks").read_text()
    except OSError:
        return _probe(lock)
    key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in listed.splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"
        if "FLOCK" in fields and "->" not in fields and key in fields:
            pid = fields[fields.index(key) - 1]
            return int(pid) if pid.isdigit() else -1
    return None


def _probe(lock: Path) -> int | None:
    fd = os.open(lock, os.O_RDONLY)
    with os.fdopen(fd, "rb") as file:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = file.read().decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
    return None


def status_lines(status: dict[str, Any]) -> list[str]:
    """``status`` for a person."""
    window = status["window"] if isinstance(status["window"], dict) else {}
    span = f"{window.get('since')} to {window.get('until') or 'now'}"
    source = status["input"] if status["input"] is not None else f"the window {span}"
    lines = [
        f"job:       {status['output']} (from {source}"
        + (f", shard {status['shard']})" if status["shard"] else ")"),
        f"progress:  {_done(status)}: {status['ok']} ok, {status['failed']} failed; "
        f"{counted(status['events'], 'event')}; "
        f"{'completed' if status['completed'] else 'not finished'}",
    ]
    if status["failures_by_code"]:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(status["failures_by_code"].items()))
        lines.append(f"failures:  {codes} (in {status['failures_file']})")
    last = status["last_run"] if isinstance(status["last_run"], dict) else {}
    pid = status["running_pid"]
    if last:
        ended = f", ended {last['ended_at']}" if last.get("ended_at") else ""
        lines.append(
            f"last run:  {last.get('command', 'run')} started {last.get('started_at')}{ended} "
            f"({counted(status['invocations'], 'run')} in all)"
        )
        lines.append(f"outcome:   {_how_it_ended(last, pid)}")
        over = (Status.RUNNING, Status.COMPLETED, Status.STOPPED)
        if last.get("reason") and last.get("status") not in over:
            lines.append(f"why:       {last['reason']}")
    lines.append(f"running:   {'yes, pid ' + str(pid) if pid else 'no'}")
    for path, reason in status["damaged"].items():
        lines.append(f"damaged:   {path}: {reason} (the next run refuses it; see docs/output.md)")
    return lines


# What the status a failed run's record holds (``errors.status_of``) means.
_FAILED = {
    Status.ABORTED: "the API refused the run (credentials, access, TLS or the base URL)",
    Status.API_UNAVAILABLE: "the API could not be reached or was down; nothing is lost, the "
    "same command resumes",
    Status.OUTPUT_ERROR: "an output file or the ledger could not be written",
    Status.USAGE_ERROR: "refused: a settings or input error",
    Status.ALREADY_RUNNING: "turned away: another harvester was running the job",
    Status.CRASHED: "an internal error (a bug)",
}


_STATUSES = frozenset(status.value for status in Status)


def _how_it_ended(last: dict[str, Any], pid: int | None) -> str:
    """How the last run ended, in words: completed, stopped, or failed with its exit code."""
    recorded = str(last.get("status"))
    how = Status(recorded) if recorded in _STATUSES else None
    if how == Status.RUNNING:
        if pid:
            return "running now"
        return "no end recorded (killed, or the machine went down): the same command resumes"
    if how == Status.COMPLETED:
        return "completed"
    if how == Status.STOPPED:
        code = last.get("exit_code")
        if isinstance(code, int) and last.get("reason"):  # stopped at once, as it said
            return f"{last['reason']} (exit code {code})"
        return "stopped before the end (a signal or the deadline): the same command resumes"
    code = last.get("exit_code")
    if not isinstance(code, int):
        code = exits.OF_STATUS.get(how, exits.INTERNAL) if how else exits.INTERNAL
    words = _FAILED.get(how, "") if how else ""
    # The status as the summary names it, then in words.
    return f"failed with exit code {code} ({how or recorded})" + (f": {words}" if words else "")


def _done(status: dict[str, Any]) -> str:
    """The calls done, and of how many when that is known."""
    done = counted(status["calls"], "call") + " done"
    if status["completed"]:
        return done
    total = status.get("input_records")
    if total is not None:
        shards = ", for all shards" if status["shard"] else ""
        return f"{done} (the input holds {counted(total, 'record')}{shards})"
    if status["input"] is not None:
        return f"{done} (total not known until the input is read to its end)"
    return f"{done} (total not known until the window's call list is read to its end)"


def night_lines(nights: list[dict[str, Any]]) -> list[str]:
    """A line a night, for a person: its date and where it stands."""
    lines = []
    for night in nights:
        state = night["state"]
        if state == "completed":
            codes = ", ".join(
                f"{code} {n}" for code, n in sorted(night["failures_by_code"].items())
            )
            how = f"completed: {counted(night['calls'], 'call')}, {night['failed']} failed"
            how += f" ({codes})" if codes else ""
        elif state == "unfinished":
            last = night["last_run"] if isinstance(night.get("last_run"), dict) else {}
            ended = f"; last run: {last.get('status')}" if last.get("status") else ""
            how = f"unfinished: {counted(night['calls'], 'call')} done so far{ended}"
        elif state == "running":
            calls = counted(night["calls"], "call")
            how = f"running (pid {night['running_pid']}): {calls} done so far"
        else:
            how = "not started"
        lines.append(f"{night['date']}  {how}")
    return lines

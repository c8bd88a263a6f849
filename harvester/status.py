"""``harvester status``: where a job stands, read from its ledger without running it and
without changing anything (the ledger is opened read-only; the lock is looked at, not taken)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

from harvester.errors import ConfigError, OutputError
from harvester.files import differs
from harvester.ledger import ledger_error, load_meta, state_dir


def job_status(output: Path) -> dict[str, Any]:
    """The job writing ``output``: what it harvests, how far it got, its last run, and whether
    a harvester is running it now. ``ConfigError`` when there is no job there."""
    state = state_dir(output)
    ledger = state / "ledger.sqlite"
    if not ledger.is_file():
        raise ConfigError(f"{output} has no harvester state beside it ({state}): no job there")
    running_pid = lock_holder(state / "lock")
    # Read-only. With no write-ahead log beside it (nobody writing, nothing left to fold in),
    # the ledger is read as immutable, so that not even SQLite's shared-memory file is made.
    wal = ledger.with_name(ledger.name + "-wal")
    still = "" if running_pid or wal.exists() else "&immutable=1"
    try:
        with contextlib.closing(
            sqlite3.connect(f"{ledger.as_uri()}?mode=ro{still}", uri=True)
        ) as db:
            meta = load_meta(db, ledger)
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise
    except sqlite3.Error as exc:  # damaged, or not readable: either way no status to give
        raise ConfigError(str(ledger_error(exc, ledger))) from exc
    if not meta:
        raise ConfigError(f"{output}: its job was begun but nothing was recorded yet")
    identity, totals = meta["identity"], meta["totals"]
    return {
        "output": identity.get("events_path", str(output)),
        "failures_file": identity.get("failures_path"),
        "input": identity.get("input"),
        "window": identity.get("window"),
        "shard": identity.get("shard"),
        "user_id": identity.get("user_id"),
        **{key: totals[key] for key in ("calls", "ok", "failed", "events", "requests")},
        "failures_by_code": meta["failure_codes"],
        "completed": meta["completed"],
        "invocations": meta["invocations"],
        "elapsed_s": round(meta["elapsed_s"], 3),
        "last_run": meta.get("last_run"),
        "running_pid": running_pid,
        "damaged": _damaged(meta),
    }


def _damaged(meta: dict[str, Any]) -> dict[str, str]:
    """The job's files that are not what its ledger vouches for, and why."""
    found = {}
    tails = meta.get("tails") or {}
    exact = bool(meta.get("changed")) or meta.get("clean", False)  # as the next run sees it
    for name, size in meta["sizes"].items():
        path = meta["identity"].get(f"{name}_path")
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
        f"progress:  {status['calls']} calls done: {status['ok']} ok, {status['failed']} failed; "
        f"{status['events']} events; {'completed' if status['completed'] else 'not finished'}",
    ]
    if status["failures_by_code"]:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(status["failures_by_code"].items()))
        lines.append(f"failures:  {codes} (in {status['failures_file']})")
    last = status["last_run"] if isinstance(status["last_run"], dict) else {}
    pid = status["running_pid"]
    if last:
        ended = f", ended {last['ended_at']}" if last.get("ended_at") else ""
        how = last.get("status")
        if how == "running" and not pid:
            how = "no end recorded (killed, or the machine went down): the same command resumes"
        lines.append(
            f"last run:  {last.get('command', 'run')} started {last.get('started_at')}: "
            f"{how}{ended} ({status['invocations']} run{'s' if status['invocations'] != 1 else ''} "
            "in all)"
        )
    lines.append(f"running:   {'yes, pid ' + str(pid) if pid else 'no'}")
    for path, reason in status["damaged"].items():
        lines.append(f"damaged:   {path}: {reason} (the next run refuses it; see the README)")
    return lines


def night_lines(nights: list[dict[str, Any]]) -> list[str]:
    """A line a night, for a person: its date and where it stands."""
    lines = []
    for night in nights:
        state = night["state"]
        if state == "completed":
            codes = ", ".join(
                f"{code} {n}" for code, n in sorted(night["failures_by_code"].items())
            )
            how = f"completed: {night['calls']} calls, {night['failed']} failed"
            how += f" ({codes})" if codes else ""
        elif state == "unfinished":
            last = night["last_run"] if isinstance(night.get("last_run"), dict) else {}
            ended = f"; last run: {last.get('status')}" if last.get("status") else ""
            how = f"unfinished: {night['calls']} calls done so far{ended}"
        elif state == "running":
            how = f"running (pid {night['running_pid']}): {night['calls']} calls done so far"
        else:
            how = "not started"
        lines.append(f"{night['date']}  {how}")
    return lines

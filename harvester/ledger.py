"""The ledger: one SQLite database per output that says which calls reached an outcome and how
much of each output file counts.

It lives in ``<output>.state/ledger.sqlite``, beside the file the output resolves to, with the
``lock`` that the one harvester writing the output holds. Table ``calls`` has one row per input
record that reached an outcome (ledger key, input line, ok/failed); table ``meta`` one row, the
job's state: its identity (input, user, output layout), the committed sizes of the output
files, the whole job's totals. The journal writes it; nothing else does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from harvester.errors import ConfigError, OutputError

SCHEMA_VERSION = 1
OK, FAILED = 1, 2
# Parameters per lookup query (SQLite's limit is 32766 on current builds, 999 on old ones).
_LOOKUP_CHUNK = 900
RUN_KEYS = ("requests", "retries", "rate_limited")
TOTAL_KEYS = ("calls", "ok", "failed", "events", *RUN_KEYS)
# The ledger key of an input line that names no call.
LINE_KEY = "\x00line:"


def line_key(line: int) -> str:
    """The ledger key of input line ``line``, which names no call."""
    return f"{LINE_KEY}{line}"


def state_dir(output: Path) -> Path:
    """Where the state of the run writing ``output`` lives: beside the file it resolves to, so
    that two names of one file (a symlink) share one state and one lock. (A job begun by an
    earlier version through a symlink keeps its state beside the link.)"""
    real = output.resolve()
    state = real.with_name(real.name + ".state")
    earlier = output.with_name(output.name + ".state")
    return earlier if not state.exists() and earlier.is_dir() else state


def stored_identity(output: Path) -> dict[str, Any]:
    """The identity recorded by the job that writes ``output``; ConfigError when there is none."""
    ledger = state_dir(output) / "ledger.sqlite"
    if not ledger.exists():
        raise ConfigError(f"{output} has no harvester state beside it: nothing to retry")
    try:
        with contextlib.closing(sqlite3.connect(ledger)) as connection:
            meta = load_meta(connection, ledger)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"the ledger {ledger} cannot be read ({exc})") from None
    if not meta:
        raise ConfigError(f"{output} has no harvester state beside it: nothing to retry")
    identity: dict[str, Any] = meta["identity"]
    return identity


def lookup(
    connection: sqlite3.Connection, keys: Iterable[str], outcome: int | None = None
) -> dict[str, int]:
    """The input line of each of ``keys`` the ledger already has (with ``outcome``)."""
    found: dict[str, int] = {}
    pending = list(keys)
    for start in range(0, len(pending), _LOOKUP_CHUNK):
        chunk = pending[start : start + _LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT call_id, line FROM calls WHERE call_id IN ({marks})"  # noqa: S608
        if outcome is not None:
            query += f" AND outcome = {int(outcome)}"
        found.update(connection.execute(query, chunk).fetchall())
    return found


def save_meta(connection: sqlite3.Connection, meta: dict[str, Any]) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('state', ?)", (orjson.dumps(meta),)
    )


def take_lock(lock: BinaryIO, directory: Path) -> None:
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise OutputError(f"cannot lock {directory}: {exc.strerror}") from None
        lock.seek(0)
        holder = lock.read().decode(errors="replace").strip() or "unknown"
        raise ConfigError(
            f"another harvester (pid {holder}) is writing this output ({directory}); "
            "wait for it to finish, or choose another --output"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n".encode())
    lock.flush()


def discard(directory: Path, paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for entry in directory.iterdir():
        if entry.name != "lock":
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def connect(ledger: Path) -> sqlite3.Connection:
    try:
        connection = sqlite3.connect(ledger, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB)")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS calls "
            "(call_id TEXT PRIMARY KEY, line INTEGER, outcome INTEGER) WITHOUT ROWID"
        )
        # isolation_level=None is autocommit; "with connection" must still open a transaction.
        connection.isolation_level = "DEFERRED"
    except sqlite3.OperationalError as exc:
        raise OutputError(
            f"cannot open the ledger {ledger}: {exc}. Free some space or fix the permissions, "
            "then run the same command again"
        ) from None
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"the ledger {ledger} cannot be used ({exc}); use --fresh to start over"
        ) from None
    return connection


def load_meta(connection: sqlite3.Connection, ledger: Path) -> dict[str, Any]:
    """The ledger's meta row: {} for a new ledger; ``ConfigError`` for one this version of
    harvester did not write, or one that is damaged."""
    row = connection.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    if row is None:
        return {}
    try:
        meta = orjson.loads(row[0])
    except orjson.JSONDecodeError:
        raise damaged(ledger) from None
    if not isinstance(meta, dict):
        raise damaged(ledger)
    if meta.get("schema") != SCHEMA_VERSION:
        raise ConfigError(f"{ledger.parent} was written by another harvester version; use --fresh")
    sizes, totals = meta.get("sizes"), meta.get("totals")
    well_formed = (
        isinstance(meta.get("identity"), dict)
        and isinstance(sizes, dict)
        and "failures" in sizes
        and all(_count(size) for size in sizes.values())
        and isinstance(totals, dict)
        and all(_count(totals.get(key)) for key in TOTAL_KEYS)
        and isinstance(meta.get("failure_codes"), dict)
        and isinstance(meta.get("completed"), bool)
        and _count(meta.get("invocations"))
        and isinstance(meta.get("elapsed_s"), int | float)
        and isinstance(tails := meta.get("tails", {}), dict)
        and all(tail is None or _count(tail) for tail in tails.values())
    )
    if not well_formed:
        raise damaged(ledger)
    return meta


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def damaged(ledger: Path) -> ConfigError:
    return ConfigError(
        f"the ledger {ledger} is damaged (it does not hold what harvester wrote): restore "
        f"{ledger.parent} from a backup, or use --fresh to start over"
    )


def check_identity(meta: dict[str, Any], identity: dict[str, Any], directory: Path) -> None:
    if not meta:
        return
    before = meta["identity"]
    changed = [
        key for key in sorted(set(before) | set(identity)) if before.get(key) != identity.get(key)
    ]
    if changed:
        what = ", ".join(
            f"{key} was {before.get(key)!r}, now {identity.get(key)!r}" for key in changed
        )
        raise ConfigError(
            f"this output belongs to another run ({what}). Run the same command as before to "
            f"resume it, add --fresh to discard it and start over, or choose another --output"
        )

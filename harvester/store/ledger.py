"""The ledger: one SQLite database per output that says which calls reached an outcome and how
much of each output file counts.

It lives in ``<output>.state/ledger.sqlite``, beside the file the output resolves to, with the
``lock`` that the one harvester writing the output holds. Table ``calls`` has one row per input
record that reached an outcome (ledger key, input line, ok/failed); table ``meta`` one row, the
job's state (``harvester.store.state.JobState``): its identity (input, user, output layout),
the committed sizes of the output files, the whole job's totals. The journal writes it; nothing
else does. Beside it, ``last-run.json`` keeps how the last run ended where a full disk keeps the
ledger from saying it (``harvester.store.last_run``).

Here: the database opened, read-only or to be written, and its errors in words; the lock; the
lookup of calls; the state folder, and starting it over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from harvester.errors import AlreadyRunning, ConfigError, OutputError

OK, FAILED = 1, 2
# Parameters per lookup query (SQLite's limit is 32766 on current builds, 999 on old ones).
_LOOKUP_CHUNK = 900
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


def read_only(ledger: Path, *, writing: bool) -> sqlite3.Connection:
    """``ledger`` opened to be read, never written. With no write-ahead log beside it and no
    harvester ``writing`` it (nothing left to fold in), as immutable, so that not even
    SQLite's shared-memory file is made: looking at a job leaves its state folder as it was."""
    wal = ledger.with_name(ledger.name + "-wal")
    still = "" if writing or wal.exists() else "&immutable=1"
    return sqlite3.connect(f"{ledger.resolve().as_uri()}?mode=ro{still}", uri=True)


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


def take_lock(lock: BinaryIO, directory: Path) -> None:
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise OutputError(f"cannot lock {directory}: {exc.strerror}") from exc
        lock.seek(0)
        holder = lock.read().decode(errors="replace").strip() or "unknown"
        holder = holder if holder.isdigit() else "unknown"
        raise AlreadyRunning(
            f"another harvester (pid {holder}) is running this job now ({directory}): this "
            "run is turned away and changes nothing; the other goes on",
            holder,
        ) from exc
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n".encode())
        lock.flush()
    except OSError as exc:
        raise OutputError(
            f"cannot write {directory / 'lock'}: {exc.strerror}. Free some space or fix the "
            "permissions, then run the same command again"
        ) from exc


def discard(directory: Path, paths: Iterable[Path]) -> None:
    """Start the job writing ``paths`` over (``--fresh``): the files they resolve to and all
    in the state folder ``directory`` but its lock are removed. A symlinked output stays a
    link, to a new file: its state stays beside the file it resolves to."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.resolve().unlink()
    for entry in directory.iterdir():
        if entry.name != "lock":
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def unmake(directory: Path, made: list[Path]) -> None:
    """Remove the state folder ``directory`` of a job refused as it was opened, and the
    folders ``made`` for it: the ledger begun and the lock are all they hold (a refusal comes
    before any output file is made). Whatever else is found there is left, and so is its
    folder."""
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "lock"):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    for folder in made:  # the state folder first, then its parents, as far as made
        try:
            folder.rmdir()
        except OSError:
            return


def connect(ledger: Path) -> sqlite3.Connection:
    """The ledger at ``ledger``, made if new (``ledger_errors`` says what its errors mean)."""
    with ledger_errors(ledger):
        connection = sqlite3.connect(ledger, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB)")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS calls "
                "(call_id TEXT PRIMARY KEY, line INTEGER, outcome INTEGER) WITHOUT ROWID"
            )
        except BaseException:
            connection.close()
            raise
        # isolation_level=None is autocommit; "with connection" must still open a transaction.
        connection.isolation_level = "DEFERRED"
    return connection


# SQLite's primary result codes that say the file is no sound ledger, and those that say the
# disk refused: what each means, in words.
_UNSOUND = {11: "SQLite finds it corrupt", 26: "it is not an SQLite database"}
_REFUSED = {
    3: "permission denied",
    8: "it cannot be written (read-only)",
    10: "the disk failed to read or write it",
    13: "the disk is full",
    14: "it cannot be opened",
    22: "it is too large for the file system",
}


@contextlib.contextmanager
def ledger_errors(ledger: Path) -> Iterator[None]:
    """SQLite's errors on ``ledger`` as harvester's own (``ledger_error``). Errors in the use
    of SQLite itself (a bug) pass unchanged."""
    try:
        yield
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise
    except sqlite3.Error as exc:
        raise ledger_error(exc, ledger) from exc


def ledger_error(exc: sqlite3.Error, ledger: Path) -> ConfigError | OutputError:
    """What an SQLite error on ``ledger`` means: a damaged ledger (``ConfigError``, exit 2:
    only a backup or starting over helps), or a disk that refused (``OutputError``, exit 4:
    the same command resumes once it is mended)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if primary in _UNSOUND:
        return damaged(ledger, f"{_UNSOUND[primary]}, {name}")
    if primary is None and type(exc) is sqlite3.DatabaseError:
        return damaged(ledger, name)
    what = _REFUSED.get(primary or 0, "SQLite cannot use it")
    return OutputError(
        f"cannot use the ledger {ledger}: {what} ({name}). Free some space or fix the "
        "permissions, then run the same command again: it resumes"
    )


def damaged(ledger: Path, why: str = "it does not hold what harvester wrote") -> ConfigError:
    """The error for a ledger that cannot be trusted, saying why and what to do."""
    return ConfigError(
        f"the ledger {ledger} is damaged ({why}), so what this job has done cannot be known. "
        f"Restore {ledger.parent} from a backup and run the same command again, or start over "
        "with --fresh (the output files are replaced and every call is fetched again)"
    )

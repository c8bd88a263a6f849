"""The ledger: one SQLite database per output that says which calls reached an outcome and how
much of each output file counts.

It lives in ``<output>.state/ledger.sqlite``, beside the file the output resolves to, with the
``lock`` that the one harvester writing the output holds. Table ``calls`` has one row per input
record that reached an outcome (ledger key, input line, ok/failed); table ``meta`` one row, the
job's state: its identity (input, user, output layout), the committed sizes of the output
files, the whole job's totals. The journal writes it; nothing else does. Beside it,
``last-run.json`` keeps how the last run ended where a full disk keeps the ledger from saying
it (``RunRecord``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
import weakref
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from harvester.errors import AlreadyRunning, ConfigError, OutputError
from harvester.exits import Status

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
    with ledger_errors(ledger), contextlib.closing(sqlite3.connect(ledger)) as connection:
        meta = load_meta(connection, ledger)
    if not meta:
        raise ConfigError(f"{output} has no harvester state beside it: nothing to retry")
    identity: dict[str, Any] = meta["identity"]
    return identity


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


def save_meta(connection: sqlite3.Connection, meta: dict[str, Any]) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('state', ?)", (orjson.dumps(meta),)
    )


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


# The last run's record, beside the ledger (see ``RunRecord``), and its fixed size.
RUN_RECORD = "last-run.json"
RUN_RECORD_SIZE = 4096


class RunRecord:
    """How the job's last run began and ended, and why, in a file of its own beside the ledger
    (the ledger's ``last_run`` holds the same).

    The file is given its full size when the job is opened, and every record is written in
    place over it: recording a run's end then needs no more room on the disk. A run stopped by
    a full disk cannot write the ledger any more (SQLite's write-ahead log grows), but this,
    so ``harvester status`` can still say how it ended. (On a copy-on-write file system, such
    as btrfs or ZFS, an overwrite needs room too: there, no end may be recorded.)
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._last: dict[str, Any] = {}
        _OPEN_RECORDS.add(self)

    @classmethod
    def reserve(cls, directory: Path) -> RunRecord:
        """The record file of the state folder ``directory``, made its full size if new;
        ``OutputError`` when it cannot be (a full disk: the ledger could not be written
        either)."""
        path = directory / RUN_RECORD
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size != RUN_RECORD_SIZE:
                # Bytes written, not a size set: a sparse file would need the room later.
                os.ftruncate(fd, 0)
                os.pwrite(fd, b" " * (RUN_RECORD_SIZE - 1) + b"\n", 0)
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise OutputError(
                f"cannot write {path}: {exc.strerror}. Free some space or fix the permissions, "
                "then run the same command again"
            ) from exc
        return cls(fd)

    def write(self, record: dict[str, Any]) -> bool:
        """Put ``record`` in the file, over the one before; False when the disk refused (the
        ledger may still have it)."""
        self._last = record
        data = orjson.dumps(record)
        if len(data) >= RUN_RECORD_SIZE:  # only a reason can be that long: it is cut short
            reason = str(record.get("reason", ""))
            cut = len(data) - RUN_RECORD_SIZE + 4
            data = orjson.dumps({**record, "reason": reason[: max(len(reason) - cut, 0)] + "..."})
        try:
            os.pwrite(self._fd, data.ljust(RUN_RECORD_SIZE - 1) + b"\n", 0)
            os.fdatasync(self._fd)
        except OSError:
            return False
        return True

    def close(self) -> None:
        _OPEN_RECORDS.discard(self)
        os.close(self._fd)


# The run records of the jobs this process has open: a forced exit says how each ended.
_OPEN_RECORDS: weakref.WeakSet[RunRecord] = weakref.WeakSet()


def record_forced_end(exit_code: int, reason: str) -> None:
    """Before the process exits at once (a second signal): each open job's run record says it
    was stopped, with ``exit_code`` and ``reason``, so that ``status`` does not take the run
    for killed. Nothing else is written: what was committed stands, the rest is cut back by
    the next run."""
    ended_at = datetime.now(UTC).isoformat(timespec="seconds")
    for record in list(_OPEN_RECORDS):
        if record._last:
            fields = {"status": Status.STOPPED, "exit_code": exit_code, "reason": reason}
            record.write({**record._last, **fields, "ended_at": ended_at})


def read_run_record(directory: Path) -> dict[str, Any] | None:
    """The record of the last run in the state folder ``directory`` (see ``RunRecord``), or
    None when there is none that can be read."""
    try:
        with (directory / RUN_RECORD).open("rb") as file:
            data = file.read(RUN_RECORD_SIZE)
        record = orjson.loads(data)
    except (OSError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


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


def load_meta(connection: sqlite3.Connection, ledger: Path) -> dict[str, Any]:
    """The ledger's meta row: {} for a new ledger; ``ConfigError`` for one this version of
    harvester did not write, or one that is damaged."""
    row = connection.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    if row is None:
        return {}
    try:
        meta = orjson.loads(row[0])
    except orjson.JSONDecodeError as exc:
        raise damaged(ledger) from exc
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


def damaged(ledger: Path, why: str = "it does not hold what harvester wrote") -> ConfigError:
    """The error for a ledger that cannot be trusted, saying why and what to do."""
    return ConfigError(
        f"the ledger {ledger} is damaged ({why}), so what this job has done cannot be known. "
        f"Restore {ledger.parent} from a backup and run the same command again, or start over "
        "with --fresh (the output files are replaced and every call is fetched again)"
    )


def check_identity(meta: dict[str, Any], identity: dict[str, Any], directory: Path) -> None:
    """Refuse a run that is not the job ``meta`` records, saying in words which setting
    differs (never the identity itself, whose hashes and layout are the ledger's)."""
    if not meta:
        return
    before = meta["identity"]
    changed = {key for key in set(before) | set(identity) if before.get(key) != identity.get(key)}
    if changed:
        said = "; ".join(_differences(before, identity, changed))
        raise ConfigError(
            f"this output belongs to another run: {said}. Use the same settings as that run to "
            "resume it, or another --output, or --fresh to discard it and start over"
        )


def _differences(before: dict[str, Any], now: dict[str, Any], changed: set[str]) -> list[str]:
    """What differs between the job's identity ``before`` and this run's ``now``, a phrase a
    setting, in the order a person checks them."""
    said = []
    if "input" in changed or "window" in changed:
        said.append(_source_differs(before, now))
    elif changed & {"size", "head_sha256"}:
        said.append(
            f"its input file {now.get('input')} has changed since (other first lines or another "
            "size, and not only grown at its end)"
        )
    for key, what in _SETTINGS:
        if key in changed:
            said.append(
                f"{what} was {_value(before.get(key))} for it, and is {_value(now.get(key))} now"
            )
    known = {"input", "window", "size", "head_sha256", *(key for key, _ in _SETTINGS)}
    said.extend(f"its {key} was another" for key in sorted(changed - known))
    return said


# The settings of a job's identity but its source, and how a person names them.
_SETTINGS = (
    ("input_format", "--input-format (input_format)"),
    ("id_column", "--id-column (id_column)"),
    ("shard", "--shard"),
    ("user_id", "user_id"),
    ("events_path", "the output"),
    ("failures_path", "--failures"),
    ("calls_path", "--calls-output"),
)


def _source_differs(before: dict[str, Any], now: dict[str, Any]) -> str:
    """How the job's source (an input file, stdin, or a window of the call list) differs from
    this run's."""
    return f"it was started with {_source(before)}, not {_source(now)}"


def _source(identity: dict[str, Any]) -> str:
    window = identity.get("window")
    if isinstance(window, dict):
        return f"the window {window.get('since')} to {window.get('until') or 'now'}"
    if identity.get("input") == "-":
        return "a stream (stdin or a pipe)"
    return f"the input file {identity.get('input')}"


def _value(value: object) -> str:
    return "not given" if value is None else str(value)

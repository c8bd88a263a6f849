"""Crash-safe output: the events and failures files, and a ledger that says how much of them counts.

The state of a run whose output is ``out/events.ndjson`` lives in ``out/events.ndjson.state/``:

- ``ledger.sqlite``: one row per input record that reached an outcome (call id, input line,
  ok/failed), and in ``meta`` the run's identity (input, user, output layout), the committed
  sizes of the two output files, and the whole job's totals.
- ``lock``: held (``flock``) by the one harvester writing this output; it says its pid.

A commit (every ``commit_calls`` calls or ``commit_seconds`` seconds) appends a batch to the
output files, fsyncs them, then records the batch's calls and the files' new sizes in one SQLite
transaction (WAL, ``synchronous=FULL``). Data is on disk before the record that points at it.
On start, each file is cut back to its committed size: whatever a crash left past it belongs to
calls the ledger does not have, which are fetched again. So every event lands exactly once,
however and whenever the process dies.

Everything here is blocking I/O, run on one dedicated thread by the pool.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import gzip
import hashlib
import os
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from harvester.errors import ConfigError, OutputError

SCHEMA_VERSION = 1
OK, FAILED = 1, 2
# Parameters per lookup query (SQLite's limit is 32766 on current builds, 999 on old ones).
_LOOKUP_CHUNK = 900
_RUN_KEYS = ("requests", "retries", "rate_limited")
TOTAL_KEYS = ("calls", "ok", "failed", "events", *_RUN_KEYS)


def state_dir(output: Path) -> Path:
    """Where the state of the run writing ``output`` lives."""
    return output.with_name(output.name + ".state")


def stored_identity(output: Path) -> dict[str, Any]:
    """The identity recorded by the job that writes ``output``; ConfigError when there is none."""
    ledger = state_dir(output) / "ledger.sqlite"
    if not ledger.exists():
        raise ConfigError(f"{output} has no harvester state beside it: nothing to retry")
    try:
        with contextlib.closing(sqlite3.connect(ledger)) as connection:
            meta = _load_meta(connection)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"the ledger {ledger} cannot be read ({exc})") from None
    if not meta:
        raise ConfigError(f"{output} has no harvester state beside it: nothing to retry")
    identity: dict[str, Any] = meta["identity"]
    return identity


def input_identity(spec: str) -> dict[str, Any]:
    """What makes a call list the same one on a re-run: its path, size and first MiB."""
    if spec == "-":
        return {"input": "-"}
    path = Path(spec).resolve()
    try:
        with path.open("rb") as f:
            head = f.read(1024 * 1024)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return {"input": str(path)}  # the reader reports the problem in its own words
    return {"input": str(path), "size": size, "head_sha256": hashlib.sha256(head).hexdigest()}


class Verdict(enum.Enum):
    """What to do with an input record."""

    NEW = "new"  # fetch it
    DONE = "done"  # reached an outcome in an earlier run: skip
    DUPLICATE = "duplicate"  # the same call stands on another line: skip


@dataclass
class Batch:
    """What one commit writes: output bytes and the ledger rows that vouch for them."""

    events: bytearray = field(default_factory=bytearray)
    failures: bytearray = field(default_factory=bytearray)
    calls: bytearray = field(default_factory=bytearray)  # listed call records, if kept
    rows: list[tuple[str, int, int]] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    event_count: int = 0
    failure_codes: Counter[str] = field(default_factory=Counter)
    list_cursor: str | None = None  # a listing run's place, up to which all is committed
    reopened: bool = False  # retry-failed: every call here had failed before

    def __len__(self) -> int:
        return len(self.rows)


class Journal:
    """The output files and the ledger of one output path. Open with ``Journal.open``."""

    def __init__(
        self,
        paths: dict[str, Path],
        connection: sqlite3.Connection,
        lock: BinaryIO,
        files: dict[str, BinaryIO],
        meta: dict[str, Any],
    ) -> None:
        self.paths = paths
        self._db = connection
        self._lock = lock
        self._files = files
        self.meta = meta
        # Keys claimed by this run and not yet committed: the calls on their way.
        self._pending: set[str] = set()
        # The job's counters as they stood before this invocation sent anything.
        self._before = {key: meta["totals"][key] for key in _RUN_KEYS}
        self._elapsed_before: float = meta["elapsed_s"]

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, paths: dict[str, Path], identity: dict[str, Any], *, fresh: bool = False
    ) -> Journal:
        """Take the lock, check the state belongs to this run, and cut the files back to their
        committed sizes. ``fresh`` discards earlier progress instead.

        ``paths`` names the output files: ``events`` and ``failures``, and ``calls`` when the
        listed calls' records are kept. A path ending in ``.gz`` is written gzip-compressed,
        one gzip member per commit, so it is a valid gzip file after every commit.

        Raises ``ConfigError`` (exit 2) for a lock held by another harvester or a state made by
        another run, ``OutputError`` (exit 4) when the files cannot be opened.
        """
        output = paths["events"]
        directory = state_dir(output)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            lock = (directory / "lock").open("a+b")
        except OSError as exc:
            raise OutputError(f"cannot create {directory}: {exc.strerror}") from None
        try:
            _take_lock(lock, directory)
            if fresh:
                _discard(directory, paths.values())
            ledger = directory / "ledger.sqlite"
            if not ledger.exists():
                for path in paths.values():
                    if path.exists() and path.stat().st_size > 0:
                        raise ConfigError(
                            f"{path} exists but holds no harvester state, so resuming into it "
                            "could double or lose events. Use --fresh to replace it, or choose "
                            "another --output"
                        )
            connection = _connect(ledger)
            meta = _load_meta(connection)
            _check_identity(meta, identity, directory)
            _finish_failures_swap(connection, meta, paths["failures"])
            if not meta:
                meta = {
                    "schema": SCHEMA_VERSION,
                    "identity": identity,
                    "sizes": dict.fromkeys(paths, 0),
                    "totals": dict.fromkeys(TOTAL_KEYS, 0),
                    "failure_codes": {},
                    "completed": False,
                    "invocations": 0,
                    "elapsed_s": 0.0,
                }
            meta["invocations"] += 1
            files = {name: _open_at(path, meta["sizes"][name]) for name, path in paths.items()}
            # New files survive a power loss only once their folder's entries are on disk too.
            for folder in {*(path.parent for path in paths.values()), directory}:
                fsync_directory(folder)
            journal = cls(paths, connection, lock, files, meta)
            journal._write_meta()
            return journal
        except BaseException:
            lock.close()
            raise

    # -- the run's questions -----------------------------------------------------------------

    def claim(self, records: list[tuple[str, int]]) -> list[Verdict]:
        """Decide, for each (key, input line), whether it is new, done earlier, or a duplicate;
        new ones are on their way from now until committed."""
        pending = self._pending
        found = self.lookup(key for key, _ in records if key not in pending)
        verdicts = []
        for key, line in records:
            if key in pending:
                verdicts.append(Verdict.DUPLICATE)
            elif key in found:
                verdicts.append(Verdict.DONE if found[key] == line else Verdict.DUPLICATE)
            else:
                pending.add(key)
                verdicts.append(Verdict.NEW)
        return verdicts

    def snapshot(self) -> dict[str, Any]:
        """The whole job's counters as committed."""
        meta = self.meta
        return {
            **meta["totals"],
            "failures_by_code": dict(meta["failure_codes"]),
            "elapsed_s": round(meta["elapsed_s"], 3),
            "bytes": sum(meta["sizes"].values()),
            "invocations": meta["invocations"],
            "completed": meta["completed"],
        }

    def lookup(self, keys: Iterable[str], outcome: int | None = None) -> dict[str, int]:
        """The input line of each of ``keys`` the ledger already has (with ``outcome``)."""
        found: dict[str, int] = {}
        pending = list(keys)
        for start in range(0, len(pending), _LOOKUP_CHUNK):
            chunk = pending[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT call_id, line FROM calls WHERE call_id IN ({marks})"  # noqa: S608
            if outcome is not None:
                query += f" AND outcome = {int(outcome)}"
            found.update(self._db.execute(query, chunk).fetchall())
        return found

    # -- retry-failed --------------------------------------------------------------------------

    def committed_failures(self) -> list[bytes]:
        """The lines of the failures file that the ledger vouches for."""
        path = self.paths["failures"]
        with path.open("rb") as f:
            data = f.read(self.meta["sizes"]["failures"])
        if path.suffix == ".gz" and data:
            data = gzip.decompress(data)
        return data.splitlines()

    def reopen(self, keys: list[str]) -> list[tuple[int, str]]:
        """Take the failed ones of ``keys`` on again: (input line, key) for each, now pending."""
        found = self.lookup(keys, outcome=FAILED)
        self._pending.update(found)
        return [(line, key) for key, line in found.items()]

    def failed_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` the ledger holds as failed."""
        return set(self.lookup(keys, outcome=FAILED))

    def replace_failures(self, lines: list[bytes], codes: dict[str, int]) -> None:
        """Make ``lines`` the whole failures file, crash-safely: the new file is written beside
        the old, the ledger records the swap, the file is renamed over, and the ledger closes
        the swap. ``open`` finishes a swap that a crash interrupted."""
        path = self.paths["failures"]
        tmp = path.with_name(f".{path.name}.retry-failed.tmp")
        data = b"".join(line + b"\n" for line in lines)
        if path.suffix == ".gz" and data:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        try:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {tmp}: {exc.strerror}") from None
        self.meta["failure_codes"] = codes
        self.meta["failures_swap"] = {"tmp": str(tmp), "size": len(data)}
        with self._db:
            self._write_meta()
        self._files["failures"].close()
        _finish_failures_swap(self._db, self.meta, path)
        self._files["failures"] = _open_at(path, self.meta["sizes"]["failures"])

    # -- committing --------------------------------------------------------------------------

    def commit(self, batch: Batch, run_totals: dict[str, int], elapsed_s: float) -> None:
        """Make ``batch`` durable: data first, then the ledger rows that point at it.

        ``run_totals`` are this invocation's request counters, added to the job's as of now.
        """
        sizes = {
            name: _append(file, getattr(batch, name), self.paths[name])
            for name, file in self._files.items()
        }
        meta = self.meta
        totals = meta["totals"]
        if batch.reopened:  # failed calls taken on again: those that now succeeded move over
            totals["ok"] += batch.ok
            totals["failed"] -= batch.ok
        else:
            totals["calls"] += batch.ok + batch.failed
            totals["ok"] += batch.ok
            totals["failed"] += batch.failed
        totals["events"] += batch.event_count
        for key in _RUN_KEYS:
            totals[key] = self._before[key] + run_totals[key]
        codes = Counter(meta["failure_codes"])
        codes.update(batch.failure_codes)
        meta["failure_codes"] = dict(codes)
        meta["sizes"] = sizes
        if batch.list_cursor is not None:
            meta["list_cursor"] = batch.list_cursor
        meta["elapsed_s"] = self._elapsed_before + elapsed_s
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO calls (call_id, line, outcome) VALUES (?, ?, ?)",
                    batch.rows,
                )
                self._write_meta()
            self._pending.difference_update(key for key, _, _ in batch.rows)
        except sqlite3.Error as exc:
            raise OutputError(
                f"cannot write the ledger in {state_dir(self.paths['events'])}: {exc}. "
                "Free some space, then run the same command again"
            ) from None

    def mark_completed(self) -> None:
        """Record that every input record has reached an outcome."""
        self.meta["completed"] = True
        try:
            with self._db:
                self._write_meta()
        except sqlite3.Error as exc:
            raise OutputError(f"cannot write the ledger: {exc}") from None

    def close(self) -> None:
        """Close files, ledger and lock (nothing is committed here)."""
        closers = [file.close for file in self._files.values()]
        for close in (*closers, self._db.close, self._lock.close):
            with contextlib.suppress(OSError, sqlite3.Error):
                close()

    def _write_meta(self) -> None:
        _save_meta(self._db, self.meta)


def _finish_failures_swap(connection: sqlite3.Connection, meta: dict[str, Any], path: Path) -> None:
    """Complete a failures-file replacement recorded in ``meta`` (see ``replace_failures``)."""
    swap = meta.get("failures_swap")
    if not swap:
        return
    tmp = Path(swap["tmp"])
    try:
        if tmp.exists():
            os.replace(tmp, path)
            fsync_directory(path.parent)
    except OSError as exc:
        raise OutputError(f"cannot replace {path}: {exc.strerror}") from None
    meta["sizes"]["failures"] = swap["size"]
    del meta["failures_swap"]
    with connection:
        _save_meta(connection, meta)


def _save_meta(connection: sqlite3.Connection, meta: dict[str, Any]) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('state', ?)", (orjson.dumps(meta),)
    )


def fsync_directory(folder: Path) -> None:
    """Make the entries of ``folder`` (files created or renamed in it) durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputError(f"cannot open {folder}: {exc.strerror}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        raise OutputError(f"cannot sync {folder}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _take_lock(lock: BinaryIO, directory: Path) -> None:
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


def _discard(directory: Path, paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for entry in directory.iterdir():
        if entry.name != "lock":
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _connect(ledger: Path) -> sqlite3.Connection:
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


def _load_meta(connection: sqlite3.Connection) -> dict[str, Any]:
    row = connection.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    if row is None:
        return {}
    meta: dict[str, Any] = orjson.loads(row[0])
    return meta


def _check_identity(meta: dict[str, Any], identity: dict[str, Any], directory: Path) -> None:
    if not meta:
        return
    if meta.get("schema") != SCHEMA_VERSION:
        raise ConfigError(f"{directory} was written by another harvester version; use --fresh")
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


def _open_at(path: Path, size: int) -> BinaryIO:
    """Open ``path`` for appending after its first ``size`` bytes, dropping anything past them."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        file = os.fdopen(fd, "r+b")
        actual = os.fstat(fd).st_size
        if actual < size:
            file.close()
            raise ConfigError(
                f"{path} is shorter ({actual} bytes) than its ledger says ({size}); it was "
                "changed by something else. Use --fresh to start over"
            )
        if actual > size:
            file.truncate(size)
            os.fsync(fd)
        file.seek(size)
        return file
    except OSError as exc:
        raise OutputError(f"cannot open {path}: {exc.strerror}") from None


def _append(file: BinaryIO, data: bytes | bytearray, path: Path) -> int:
    """Append ``data`` durably, as a gzip member of its own for a ``.gz`` path; the new size."""
    try:
        if data:
            if path.suffix == ".gz":
                data = gzip.compress(data, compresslevel=6, mtime=0)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return file.tell()
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: {exc.strerror}. Nothing past the last commit counts; free "
            "some space or fix the permissions, then run the same command again"
        ) from None

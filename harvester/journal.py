"""Crash-safe output: the events and failures files, and a ledger that says how much of them counts.

The state of a run whose output is ``out/events.ndjson`` lives in ``out/events.ndjson.state/``:

- ``ledger.sqlite``: one row per input record that reached an outcome (call id, input line,
  ok/failed), and in ``meta`` the run's identity (input, user, output layout), the committed
  sizes of the output files (events, failures, and listed calls when kept), and the whole job's
  totals.
- ``lock``: held (``flock``) by the one harvester writing this output; it says its pid.

A commit (every ``commit_calls`` calls or ``commit_seconds`` seconds) appends a batch to the
output files, fsyncs them, then records the batch's calls and the files' new sizes in one SQLite
transaction (WAL, ``synchronous=FULL``). Data is on disk before the record that points at it.
On start, each file is cut back to its committed size: whatever a crash left past it belongs to
calls the ledger does not have, which are fetched again. So every event lands exactly once,
however and whenever the process dies.

The failures file can always be made again from the ledger: when it is lost or damaged, it is
rebuilt (one line per failed call; the reasons are gone, the calls are not), and after
``retry-failed`` took calls on again it is compacted to one line per call still failing, even
when that run was cut short.

Everything here is blocking I/O, run on one dedicated thread by the pool.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import gzip
import logging
import os
import shutil
import sqlite3
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from harvester.errors import ConfigError, OutputError
from harvester.ids import is_call_id
from harvester.ndjson import failure_line

log = logging.getLogger("harvester")

SCHEMA_VERSION = 1
OK, FAILED = 1, 2
# Parameters per lookup query (SQLite's limit is 32766 on current builds, 999 on old ones).
_LOOKUP_CHUNK = 900
_RUN_KEYS = ("requests", "retries", "rate_limited")
TOTAL_KEYS = ("calls", "ok", "failed", "events", *_RUN_KEYS)
# An empty gzip file that gzip -t and zcat accept: an empty member, not zero bytes.
EMPTY_GZIP = gzip.compress(b"", mtime=0)
# The ledger key of an input line that names no call.
LINE_KEY = "\x00line:"
# What reading a damaged (truncated, corrupt) file raises.
_DAMAGED = (OSError, EOFError, zlib.error)


def state_dir(output: Path) -> Path:
    """Where the state of the run writing ``output`` lives: beside the file it resolves to, so
    that two names of one file (a symlink) share one state and one lock. (A job begun by an
    earlier version through a symlink keeps its state beside the link.)"""
    real = output.resolve()
    state = real.with_name(real.name + ".state")
    earlier = output.with_name(output.name + ".state")
    return earlier if not state.exists() and earlier.is_dir() else state


def check_files(files: dict[str, Path]) -> None:
    """Refuse, before anything is written, files the run cannot keep apart.

    ``files`` maps each flag to its path (``--output`` among them). Two flags naming one file
    (however spelled: relative, through a symlink, a hard link), a folder where a file belongs,
    and a file inside the output's state folder are all ``ConfigError``s.
    """
    state = state_dir(files["--output"])
    seen: dict[object, str] = {}
    for flag, path in files.items():
        if str(path) in ("", "."):
            raise ConfigError(f"{flag} is empty: give a file path")
        real = path.resolve()
        if real.is_dir():
            raise ConfigError(f"{flag} {path} is a folder: give a file path, such as {path}/x")
        if flag != "--input" and real.exists() and not real.is_file():
            raise ConfigError(
                f"{flag} {path} is not a regular file (a device, a FIFO, a socket): harvester "
                "writes it by replacing it or cutting it back, so it must be a file of its own"
            )
        if real == state or state in real.parents:
            raise ConfigError(f"{flag} {path} is inside {state}, which holds harvester's state")
        names: list[object] = [real]
        with contextlib.suppress(OSError):
            info = real.stat()
            names.append((info.st_dev, info.st_ino))
        for name in names:
            other = seen.setdefault(name, flag)
            if other != flag:
                raise ConfigError(
                    f"{other} and {flag} name the same file ({path}): writing one would destroy "
                    "the other. Give each a file of its own"
                )


def stored_identity(output: Path) -> dict[str, Any]:
    """The identity recorded by the job that writes ``output``; ConfigError when there is none."""
    ledger = state_dir(output) / "ledger.sqlite"
    if not ledger.exists():
        raise ConfigError(f"{output} has no harvester state beside it: nothing to retry")
    try:
        with contextlib.closing(sqlite3.connect(ledger)) as connection:
            meta = _load_meta(connection, ledger)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"the ledger {ledger} cannot be read ({exc})") from None
    if not meta:
        raise ConfigError(f"{output} has no harvester state beside it: nothing to retry")
    identity: dict[str, Any] = meta["identity"]
    return identity


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

    @property
    def size(self) -> int:
        """Bytes of output the batch holds."""
        return len(self.events) + len(self.failures) + len(self.calls)


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
            connection = _connect(ledger)
            meta = _load_meta(connection, ledger)
            if not meta:  # a new ledger, or one that never got as far as its first record
                _check_no_data(paths.values())
            _check_identity(meta, identity, directory)
            if meta and set(meta["sizes"]) != set(paths):
                raise _damaged(ledger)
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
            failures = paths["failures"]
            if _cut_short(failures, meta["sizes"]["failures"]):
                log.warning(
                    "%s is missing or shorter than committed: rebuilt it from the ledger, one "
                    "line per failed call (their reasons are lost; retry-failed takes them on)",
                    failures,
                )
                _swap_failures(connection, meta, failures, _ledger_failures(connection))
            files = {name: _open_at(path, meta["sizes"][name]) for name, path in paths.items()}
            for name, path in paths.items():
                if path.suffix == ".gz" and meta["sizes"][name] == 0:
                    meta["sizes"][name] = _append(files[name], EMPTY_GZIP, path, compress=False)
            # New files survive a power loss only once their folder's entries are on disk too.
            for folder in {*(path.parent for path in paths.values()), directory}:
                fsync_directory(folder)
            journal = cls(paths, connection, lock, files, meta)
            # Durable before any data is written: from now on, data without a ledger entry is
            # ours, uncommitted, and is cut back on the next open.
            try:
                with connection:
                    journal._write_meta()
            except sqlite3.Error as exc:
                raise OutputError(
                    f"cannot write the ledger {ledger}: {exc}. Free some space, then run the "
                    "same command again"
                ) from None
            if meta.get("failures_dirty"):
                journal.compact_failures()  # a retry-failed run was cut short
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

    # -- the failures file ----------------------------------------------------------------------

    def committed_failures(self) -> list[bytes]:
        """The lines of the failures file that the ledger vouches for (rebuilt from the ledger
        first if the file is damaged)."""
        try:
            return self._read_failures()
        except _DAMAGED as exc:
            log.warning(
                "%s is damaged (%s): rebuilt it from the ledger, one line per failed call (their "
                "reasons are lost; retry-failed takes them on)",
                self.paths["failures"],
                exc,
            )
        self._swap_failures(_ledger_failures(self._db))
        try:
            return self._read_failures()
        except _DAMAGED as exc:
            raise OutputError(f"cannot read {self.paths['failures']}: {exc}") from None

    def _read_failures(self) -> list[bytes]:
        path, size = self.paths["failures"], self.meta["sizes"]["failures"]
        with path.open("rb") as f:
            data = f.read(size)
        if len(data) < size:
            raise EOFError(f"{len(data)} bytes, {size} committed")
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return data.splitlines()

    def reopen(self, keys: list[str]) -> list[tuple[int, str]]:
        """Take the failed ones of ``keys`` on again: (input line, key) for each, now pending.

        From now until ``compact_failures`` the failures file may list a call twice, or one
        that has since succeeded; the ledger remembers that, so any later open compacts it.
        """
        found = self.lookup(keys, outcome=FAILED)
        self._pending.update(found)
        if found:
            self.meta["failures_dirty"] = True
            with self._db:
                self._write_meta()
        return [(line, key) for key, line in found.items()]

    def compact_failures(self) -> None:
        """Make the failures file one line per call the ledger holds as failed, in input order:
        its newest line in the file (calls harvested since are dropped, calls that failed again
        are listed once), or a rebuilt one if the file had none."""
        known: dict[str, bytes] = {}
        for line in self.committed_failures():
            key = _key_of_line(line)
            if key is not None:
                known[key] = line + b"\n"  # the newest line of a call is the one kept
        codes: Counter[str] = Counter()

        def lines() -> Iterator[bytes]:
            for line in _ledger_failures(self._db, known):
                codes[str(_failure_record(line).get("code"))] += 1
                yield line

        self._swap_failures(lines(), codes)

    def _swap_failures(self, lines: Iterable[bytes], codes: dict[str, int] | None = None) -> None:
        path = self.paths["failures"]
        self._files["failures"].close()
        _swap_failures(self._db, self.meta, path, lines, codes)
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


def _swap_failures(
    connection: sqlite3.Connection,
    meta: dict[str, Any],
    path: Path,
    lines: Iterable[bytes],
    codes: dict[str, int] | None = None,
) -> None:
    """Make ``lines`` the whole failures file, crash-safely: the new file is written beside the
    old, the ledger records the swap, the file is renamed over, and the ledger closes the swap
    (``open`` finishes a swap that a crash interrupted). ``codes``: the failures by code now."""
    tmp = path.with_name(f".{path.name}.swap.tmp")
    try:
        with tmp.open("wb") as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as packed:
                    packed.writelines(lines)
            else:
                raw.writelines(lines)
            raw.flush()
            os.fsync(raw.fileno())
            size = raw.tell()
    except OSError as exc:
        raise OutputError(f"cannot write {tmp}: {exc.strerror}") from None
    if codes is not None:
        meta["failure_codes"] = codes
    meta.pop("failures_dirty", None)
    meta["failures_swap"] = {"tmp": str(tmp), "size": size}
    with connection:
        _save_meta(connection, meta)
    _finish_failures_swap(connection, meta, path)


REBUILT = "rebuilt from the ledger: the failures file was lost or damaged, and the reason with it"


def _ledger_failures(
    connection: sqlite3.Connection, known: dict[str, bytes] | None = None
) -> Iterator[bytes]:
    """A failures line for each call the ledger holds as failed, in input order: the one
    ``known`` by its ledger key, else one rebuilt from the ledger."""
    known = known or {}
    rows = connection.execute(
        "SELECT call_id, line FROM calls WHERE outcome = ? ORDER BY line", (FAILED,)
    )
    for key, line in rows:
        if key in known:
            yield known[key]
        elif key.startswith(LINE_KEY):
            yield failure_line(None, None, "invalid-input", f"input line {line}: {REBUILT}", 0)
        else:
            code = "reason-lost" if is_call_id(key) else "invalid-call-id"
            yield failure_line(key, None, code, REBUILT, 0)


def _key_of_line(line: bytes) -> str | None:
    """The ledger key of a failures line: its call id, or for an input line that names no
    call, the line number its message starts with (``input line N: ...``)."""
    record = _failure_record(line)
    call_id = record.get("callId")
    if isinstance(call_id, str):
        return call_id
    message = record.get("message")
    if call_id is None and isinstance(message, str):
        number, colon, _ = message.removeprefix("input line ").partition(":")
        if colon and number.isascii() and number.isdigit():
            return f"{LINE_KEY}{int(number)}"
    return None


def _failure_record(line: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _cut_short(path: Path, size: int) -> bool:
    """True when ``path`` is missing or shorter than its committed ``size``."""
    try:
        return path.stat().st_size < size
    except FileNotFoundError:
        return size > 0
    except OSError as exc:
        raise OutputError(f"cannot open {path}: {exc.strerror}") from None


def _check_no_data(paths: Iterable[Path]) -> None:
    """Refuse files that hold data no ledger vouches for: starting over would cut them."""
    for path in paths:
        if path.exists() and path.stat().st_size > 0:
            raise ConfigError(
                f"{path} exists but holds no harvester state, so resuming into it could double "
                "or lose events. Use --fresh to replace it, or choose another --output"
            )


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


def _load_meta(connection: sqlite3.Connection, ledger: Path) -> dict[str, Any]:
    """The ledger's meta row: {} for a new ledger; ``ConfigError`` for one this version of
    harvester did not write, or one that is damaged."""
    row = connection.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    if row is None:
        return {}
    try:
        meta = orjson.loads(row[0])
    except orjson.JSONDecodeError:
        raise _damaged(ledger) from None
    if not isinstance(meta, dict):
        raise _damaged(ledger)
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
    )
    if not well_formed:
        raise _damaged(ledger)
    return meta


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _damaged(ledger: Path) -> ConfigError:
    return ConfigError(
        f"the ledger {ledger} is damaged (it does not hold what harvester wrote): restore "
        f"{ledger.parent} from a backup, or use --fresh to start over"
    )


def _check_identity(meta: dict[str, Any], identity: dict[str, Any], directory: Path) -> None:
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
                f"{path} is shorter ({actual} bytes) than its ledger says ({size}): something "
                "else changed it, and the events it held are gone. Restore it from a backup, or "
                "use --fresh to start over (every call is fetched again)"
            )
        if actual > size:
            file.truncate(size)
            os.fsync(fd)
        file.seek(size)
        return file
    except OSError as exc:
        raise OutputError(f"cannot open {path}: {exc.strerror}") from None


def _append(file: BinaryIO, data: bytes | bytearray, path: Path, *, compress: bool = True) -> int:
    """Append ``data`` durably, as a gzip member of its own for a ``.gz`` path; the new size."""
    try:
        if data:
            if compress and path.suffix == ".gz":
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

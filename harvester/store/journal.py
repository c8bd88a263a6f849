"""Crash-safe output: the events and failures files (and the listed calls, when kept), and a
ledger that says how much of them counts (``harvester.store.ledger``, the job's state in it
``harvester.store.state``).

A commit (every ``commit_calls`` calls or ``commit_seconds`` seconds) appends a batch to the
output files, fsyncs them, then records the batch's calls and the files' new sizes in one SQLite
transaction (WAL, ``synchronous=FULL``). Data is on disk before the record that points at it.
On start, each file is cut back to its committed size (``harvester.store.outputs``): whatever a
crash left past it belongs to calls the ledger does not have, which are fetched again. So every
event lands exactly once, however and whenever the process dies. The failures file can always be
made again from the ledger (``harvester.store.failures``).

Everything here is blocking I/O, run on one dedicated thread by the sink: a commit is one hop
to that thread, which writes, fsyncs and commits the SQLite transaction in order. It is not
written through aiofiles, which would make each write and fsync a hop of its own and split
what must happen in order on one thread across many.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

from harvester.errors import ConfigError, OutputChanged, OutputError
from harvester.ids import CallRef
from harvester.store import failures
from harvester.store.batch import Batch
from harvester.store.files import DAMAGED, AppendFile, Fsync, check_no_data
from harvester.store.identity import check_identity, grown
from harvester.store.last_run import RunRecord
from harvester.store.ledger import (
    FAILED,
    OK,
    connect,
    damaged,
    discard,
    ledger_errors,
    lookup,
    state_dir,
    take_lock,
    unmake,
)
from harvester.store.outputs import REBUILT, open_outputs
from harvester.store.state import RUN_KEYS, JobState, load_state, save_state

# ``Batch`` is what a commit takes: the journal's callers name it here.
log = logging.getLogger("harvester")

F = TypeVar("F", bound=Callable[..., Any])


class Verdict(enum.Enum):
    """What to do with an input record."""

    NEW = "new"  # fetch it
    DONE = "done"  # reached an outcome in an earlier run: skip
    DUPLICATE = "duplicate"  # the same call stands on another line: skip


def _ledger_guarded(method: F) -> F:
    """``method`` of a ``Journal``, its SQLite errors said as harvester's
    (``ledger.ledger_errors``)."""

    @functools.wraps(method)
    def guarded(journal: Journal, *args: Any, **kwargs: Any) -> Any:
        with ledger_errors(journal.ledger):
            return method(journal, *args, **kwargs)

    return cast(F, guarded)


class Journal:
    """The output files and the ledger of one output path. Open with ``Journal.open``.

    ``state`` is the job's state as last committed; ``fsync`` makes every write to the files
    durable (``os.fsync``, unless the opener gave another)."""

    def __init__(
        self,
        paths: dict[str, Path],
        connection: sqlite3.Connection,
        lock: BinaryIO,
        files: dict[str, AppendFile],
        state: JobState,
        fsync: Fsync = os.fsync,
    ) -> None:
        self.paths = paths
        self.ledger = state_dir(paths["events"]) / "ledger.sqlite"
        self._db = connection
        self._lock = lock
        self._files = files
        self.state = state
        self._fsync = fsync
        # Keys claimed by this run and not yet committed: the calls on their way.
        self._pending: set[str] = set()
        # Keys that had failed, taken on again by this run (retry-failed).
        self._retaken: set[str] = set()
        # Every byte appended is committed (the files were just cut back to the ledger's sizes).
        self._clean = True
        # How this run began and ended, where a full disk cannot stop it being said.
        self._record: RunRecord | None = None
        # The job's counters as they stood before this invocation sent anything.
        self._before = {key: state.totals[key] for key in RUN_KEYS}
        self._elapsed_before = state.elapsed_s

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        paths: dict[str, Path],
        identity: dict[str, Any],
        *,
        fresh: bool = False,
        grew: Callable[[dict[str, Any]], bool] | None = None,
        fsync: Fsync = os.fsync,
    ) -> Journal:
        """Take the lock, check the state belongs to this run, and cut the files back to their
        committed sizes. ``fresh`` discards earlier progress instead.

        ``paths`` names the output files: ``events`` and ``failures``, and ``calls`` when the
        listed calls' records are kept. A path ending in ``.gz`` is written gzip-compressed,
        one gzip member per commit, so it is a valid gzip file after every commit. ``fsync``
        makes the files' writes durable (the ledger's are SQLite's own).

        Raises ``ConfigError`` (exit 2) for a lock held by another harvester or a state made by
        another run, ``OutputError`` (exit 4) when the files cannot be opened.
        """
        output = paths["events"]
        directory = state_dir(output)
        # The folders this open makes, kept only once the job is accepted: a refused run
        # leaves nothing behind.
        made = [folder for folder in (directory, *directory.parents) if not folder.exists()]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            lock = (directory / "lock").open("a+b", buffering=0)
        except OSError as exc:
            raise OutputError(f"cannot create {directory}: {exc.strerror}") from exc
        ledger = directory / "ledger.sqlite"
        connection: sqlite3.Connection | None = None
        journal: Journal | None = None
        try:
            take_lock(lock, directory)
            if fresh:
                discard(directory, paths.values())
            connection = connect(ledger)
            with ledger_errors(ledger):
                journal = cls._opened(paths, identity, ledger, connection, lock, grew, fsync)
            journal._record = RunRecord.reserve(directory, fsync)
            if journal.state.failures_dirty:
                journal.compact_failures()  # a retry-failed run was cut short
            return journal
        except BaseException as exc:
            if journal is not None:
                journal.close()
            else:
                if connection is not None:
                    connection.close()
                with contextlib.suppress(OSError):
                    lock.close()
                if made and isinstance(exc, ConfigError):
                    unmake(directory, made)
            raise

    @classmethod
    def _opened(
        cls,
        paths: dict[str, Path],
        identity: dict[str, Any],
        ledger: Path,
        connection: sqlite3.Connection,
        lock: BinaryIO,
        grew: Callable[[dict[str, Any]], bool] | None,
        fsync: Fsync,
    ) -> Journal:
        """The rest of ``open``, once the lock is held and the ledger connected."""
        state = load_state(connection, ledger)
        if state is None:  # a new ledger, or one that never got as far as its first record
            check_no_data(paths.values())
        elif grew is not None and grown(state.identity, identity, grew):
            log.info(
                "the call list grew since the last run (%s -> %s bytes, what it held "
                "unchanged): going on with its new calls",
                state.identity.get("size"),
                identity.get("size"),
            )
            state.identity, state.completed = identity, False
        check_identity(state, identity)
        if state is None:
            state = JobState.new(identity, list(paths))
        elif set(state.sizes) != set(paths):
            raise damaged(ledger)
        failures.finish_swap(connection, state, paths["failures"], fsync)
        files = open_outputs(paths, state, connection, ledger.parent, fsync)
        state.invocations += 1
        state.clean = False  # until this run's last append is committed (``close``)
        journal = cls(paths, connection, lock, files, state, fsync)
        # Durable before any data is written: from now on, data without a ledger entry is
        # ours, uncommitted, and is cut back on the next open.
        with connection:
            journal._write_state()
        return journal

    # -- the run's questions -----------------------------------------------------------------

    @_ledger_guarded
    def claim(self, records: list[CallRef]) -> list[Verdict]:
        """Decide, for each call, whether it is new, done earlier (the same key on the same
        input line), or a duplicate; new ones are on their way from now until committed."""
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

    @_ledger_guarded
    def harvested_call(self) -> str | None:
        """A call harvested by this job so far, if any."""
        row = self._db.execute("SELECT call_id FROM calls WHERE outcome = ? LIMIT 1", (OK,))
        found = row.fetchone()
        return None if found is None else str(found[0])

    @_ledger_guarded
    def lookup(self, keys: Iterable[str], outcome: int | None = None) -> dict[str, int]:
        """The input line of each of ``keys`` the ledger already has (with ``outcome``)."""
        return lookup(self._db, keys, outcome)

    # -- the failures file ----------------------------------------------------------------------

    @_ledger_guarded
    def committed_failures(self) -> list[bytes]:
        """The lines of the failures file that the ledger vouches for (rebuilt from the ledger
        first if the file is damaged)."""
        path = self.paths["failures"]
        try:
            return failures.read_committed(path, self.state.sizes["failures"])
        except DAMAGED as exc:
            log.warning(
                "%s is damaged (%s): rebuilt it from the ledger, one line per failed call (their "
                "reasons are lost; retry-failed takes them on)",
                path,
                exc,
            )
        self._swap_failures(failures.ledger_lines(self._db))
        try:
            return failures.read_committed(path, self.state.sizes["failures"])
        except DAMAGED as exc:  # said in our words: the system's reason, or what zlib found
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "damaged gzip"
            raise OutputError(f"cannot read {path}: {why}") from exc

    @_ledger_guarded
    def retake(self, keys: list[str]) -> list[CallRef]:
        """Take the failed ones of ``keys`` on again: each, with its input line, now pending.

        From now until ``compact_failures`` the failures file may list a call twice, or one
        that has since succeeded; the ledger remembers that, so any later open compacts it.
        """
        found = self.lookup(keys, outcome=FAILED)
        self._pending.update(found)
        self._retaken.update(found)
        if found:
            self.state.failures_dirty = True
            with self._db:
                self._write_state()
        return [CallRef(key, line) for key, line in found.items()]

    @_ledger_guarded
    def compact_failures(self) -> None:
        """Make the failures file one line per call the ledger holds as failed, in input order
        (see ``failures.compacted``)."""
        lines, codes = failures.compacted(self._db, self.committed_failures())
        self._swap_failures(lines, codes)

    def _swap_failures(self, lines: Iterable[bytes], codes: dict[str, int] | None = None) -> None:
        path = self.paths["failures"]
        self._files["failures"].close()
        failures.swap(self._db, self.state, path, lines, codes, fsync=self._fsync)
        size = self.state.sizes["failures"]
        self._files["failures"] = AppendFile.open(path, size, REBUILT, self._fsync)

    # -- committing --------------------------------------------------------------------------

    @_ledger_guarded
    def commit(self, batch: Batch, run_totals: dict[str, int], elapsed_s: float) -> None:
        """Make ``batch`` durable: data first, then the ledger rows that point at it.

        ``run_totals`` are this invocation's request counters, added to the job's as of now.
        """
        files = self._files
        self._clean = False  # from the first byte appended until the ledger vouches for all
        try:
            for file in files.values():  # every one still the file written, before any is touched
                file.check()
            sizes = {name: file.append(getattr(batch, name)) for name, file in files.items()}
        except OutputChanged as exc:
            # Kept, so that the next run refuses the job until the file is as committed again.
            self.state.changed = f"{exc.what} while harvester was writing it"
            with contextlib.suppress(sqlite3.Error), self._db:
                self._write_state()
            raise
        # A call taken on again (retry-failed) was counted once already, as failed.
        again = sum(key in self._retaken for key, _, _ in batch.rows) if self._retaken else 0
        counters = {**run_totals, **{key: self._before[key] + run_totals[key] for key in RUN_KEYS}}
        # The ledger's state after this commit, made aside: until the transaction is through,
        # the state in hand stays the committed one, so that nothing written later (how the
        # run ended, on a disk that refused this commit) records sizes no rows vouch for.
        state = self.state.after(batch, again, counters, self._elapsed_before + elapsed_s)
        state.sizes = sizes
        state.tails = {name: file.checksum for name, file in files.items()}
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO calls (call_id, line, outcome) VALUES (?, ?, ?)",
                batch.rows,
            )
            save_state(self._db, state)
        self.state = state
        self._pending.difference_update(key for key, _, _ in batch.rows)
        self._clean = True

    @_ledger_guarded
    def note_run(self, **fields: Any) -> None:
        """Record how this invocation stands (``started_at``, ``command``, ``status``...), for
        ``harvester status``."""
        # A run's start begins its record afresh: nothing of the last run's end carries over.
        before = {} if "started_at" in fields else self.state.last_run or {}
        last = self.state.last_run = {
            **before,
            **fields,
            "invocation": self.state.invocations,
        }
        # The record beside the ledger first: on a full disk, it is the one written.
        if self._record is not None:
            self._record.write(last)
        with self._db:
            self._write_state()

    @_ledger_guarded
    def mark_completed(self) -> None:
        """Record that every input record has reached an outcome."""
        self._set_completed(True)

    def reopen(self) -> None:
        """Record that a run reads the input through again and may find more: not completed
        until it is."""
        self._set_completed(False)

    def _set_completed(self, completed: bool) -> None:
        self.state.completed = completed
        with self._db:
            self._write_state()

    def close(self) -> None:
        """Close files, ledger and lock (nothing is committed here). When every byte appended
        was committed, the ledger says so: bytes found past a committed size on the next open
        are then none of harvester's, and refused rather than cut off."""
        if self._clean:
            self.state.clean = True
            with contextlib.suppress(sqlite3.Error), self._db:
                self._write_state()
        closers = [file.close for file in self._files.values()]
        if self._record is not None:
            closers.append(self._record.close)
        for close in (*closers, self._db.close, self._lock.close):
            with contextlib.suppress(OSError, sqlite3.Error):
                close()

    def _write_state(self) -> None:
        save_state(self._db, self.state)

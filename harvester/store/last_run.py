"""The last run's record (``RunRecord``): how the job's last run began and ended, in a file
of its own beside the ledger (``last-run.json``), where a full disk cannot keep it from being
said."""

from __future__ import annotations

import os
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from harvester.errors import OutputError
from harvester.exits import Status
from harvester.store.files import Fsync

# The last run's record, in the state folder beside the ledger, and its fixed size.
RUN_RECORD = "last-run.json"
RUN_RECORD_SIZE = 4096


class RunRecord:
    """How the job's last run began and ended, and why, in a file of its own beside the ledger
    (the ledger's state, ``JobState.last_run``, holds the same).

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
    def reserve(cls, directory: Path, fsync: Fsync = os.fsync) -> RunRecord:
        """The record file of the state folder ``directory``, made its full size if new (and
        made durable with ``fsync``); ``OutputError`` when it cannot be (a full disk: the ledger
        could not be written either)."""
        path = directory / RUN_RECORD
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size != RUN_RECORD_SIZE:
                # Bytes written, not a size set: a sparse file would need the room later.
                os.ftruncate(fd, 0)
                os.pwrite(fd, b" " * (RUN_RECORD_SIZE - 1) + b"\n", 0)
                fsync(fd)
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

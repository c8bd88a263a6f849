"""The failures file as the ledger knows it: read back, rebuilt, compacted.

The failures file can always be made again from the ledger: when it is lost or damaged, it is
rebuilt (one line per failed call; the reasons are gone, the calls are not), and after
``retry-failed`` took calls on again it is compacted to one line per call still failing, even
when that run was cut short. A replacement is crash-safe: the new file is written beside the
old, the ledger records the swap, the file is renamed over, and the ledger closes the swap;
opening the journal finishes a swap that a crash interrupted.

Blocking I/O, for the journal's disk thread.
"""

from __future__ import annotations

import gzip
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from harvester.errors import FailureCode, OutputError
from harvester.ids import is_call_id
from harvester.store.files import Fsync, fsync_directory, tail_checksum
from harvester.store.ledger import FAILED, LINE_KEY, line_key
from harvester.store.ndjson import failure_line
from harvester.store.state import FailuresSwap, JobState, save_state

REBUILT = "rebuilt from the ledger: the failures file was lost or damaged, and the reason with it"


def read_committed(path: Path, size: int) -> list[bytes]:
    """The lines of the failures file's first ``size`` bytes, the part the ledger vouches for.
    Raises one of ``files.DAMAGED`` when they cannot be read back whole."""
    with path.open("rb") as f:
        return committed_lines(f.read(size), size, path)


def committed_lines(data: bytes, size: int, path: Path) -> list[bytes]:
    """The lines of ``data``, the first ``size`` bytes read of the failures file ``path``."""
    if len(data) < size:
        raise EOFError(f"{len(data)} bytes, {size} committed")
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.splitlines()


def compacted(
    connection: sqlite3.Connection, committed: list[bytes]
) -> tuple[Iterator[bytes], Counter[str]]:
    """One line per call the ledger holds as failed, in input order: its newest line among
    ``committed`` (calls harvested since are dropped, calls that failed again are listed
    once), or a rebuilt one. The counter fills, by code, as the lines are taken."""
    known: dict[str, bytes] = {}
    for line in committed:
        key = _key_of_line(line)
        if key is not None:
            known[key] = line + b"\n"  # the newest line of a call is the one kept
    codes: Counter[str] = Counter()

    def lines() -> Iterator[bytes]:
        for line in ledger_lines(connection, known):
            codes[str(_failure_record(line).get("code"))] += 1
            yield line

    return lines(), codes


def finish_swap(
    connection: sqlite3.Connection, state: JobState, path: Path, fsync: Fsync = os.fsync
) -> None:
    """Complete a failures-file replacement recorded in ``state`` (see ``swap``)."""
    pending = state.failures_swap
    if not pending:
        return
    tmp = Path(pending["tmp"])
    try:
        if tmp.exists():
            os.replace(tmp, path)
            fsync_directory(path.parent, fsync)
    except OSError as exc:
        raise OutputError(f"cannot replace {path}: {exc.strerror}") from exc
    state.sizes["failures"] = pending["size"]
    state.tails["failures"] = pending.get("tail")
    state.failures_swap = None
    with connection:
        save_state(connection, state)


def swap(
    connection: sqlite3.Connection,
    state: JobState,
    path: Path,
    lines: Iterable[bytes],
    codes: dict[str, int] | None = None,
    *,
    fsync: Fsync = os.fsync,
) -> None:
    """Make ``lines`` the whole failures file, crash-safely: the new file is written beside the
    old, the ledger records the swap, the file is renamed over, and the ledger closes the swap
    (``open`` finishes a swap that a crash interrupted). ``codes``: the failures by code now;
    ``fsync`` makes the new file and the rename durable."""
    tmp = path.with_name(f".{path.name}.swap.tmp")
    try:
        with tmp.open("w+b") as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as packed:
                    packed.writelines(lines)
            else:
                raw.writelines(lines)
            raw.flush()
            fsync(raw.fileno())
            size = raw.tell()
            tail = tail_checksum(raw.fileno(), size)
    except OSError as exc:
        raise OutputError(f"cannot write {tmp}: {exc.strerror}") from exc
    if codes is not None:
        state.failure_codes = codes
    state.failures_dirty = False
    state.failures_swap = FailuresSwap(tmp=str(tmp), size=size, tail=tail)
    with connection:
        save_state(connection, state)
    finish_swap(connection, state, path, fsync)


def ledger_lines(
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
            message = f"input line {line}: {REBUILT}"
            yield failure_line(None, None, FailureCode.INVALID_INPUT, message, 0, line)
        else:
            code = FailureCode.REASON_LOST if is_call_id(key) else FailureCode.INVALID_CALL_ID
            yield failure_line(key, None, code, REBUILT, 0)


def _key_of_line(line: bytes) -> str | None:
    """The ledger key of a failures line: its call id, or for an input line that names no
    call, its ``inputLine`` (in a file of an earlier version, the line number its message
    starts with: ``input line N: ...``)."""
    record = _failure_record(line)
    call_id = record.get("callId")
    if isinstance(call_id, str):
        return call_id
    number = record.get("inputLine")
    if call_id is None and isinstance(number, int) and not isinstance(number, bool):
        return line_key(number)
    message = record.get("message")
    if call_id is None and isinstance(message, str):
        number, colon, _ = message.removeprefix("input line ").partition(":")
        if colon and number.isascii() and number.isdigit():
            return line_key(int(number))
    return None


def _failure_record(line: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}

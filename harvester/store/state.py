"""The job's state (``JobState``): what the ledger's ``meta`` row holds, read back checked and
written as the JSON it has always been.

The row is the one key ``'state'`` of table ``meta``: the job's identity (input, user, output
layout), the committed sizes of the output files and a checksum of each one's end, the whole
job's totals, how its last run stands, and a listing run's place in the call list. The journal
writes it; ``harvester status`` and the dry run read it.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import orjson

from harvester.errors import ConfigError
from harvester.store.batch import Batch
from harvester.store.ledger import damaged

SCHEMA_VERSION = 1
RUN_KEYS = ("requests", "retries", "rate_limited")
TOTAL_KEYS = ("calls", "ok", "failed", "events", *RUN_KEYS)


class FailuresSwap(TypedDict):
    """A replacement of the failures file under way (see ``failures.swap``): the new file
    beside the old, and the size and tail checksum it commits."""

    tmp: str
    size: int
    tail: int | None


@dataclass(slots=True)
class JobState:
    """The job's state as last committed. ``identity`` is free-form: the settings that make a
    run this job (see ``harvester.run.job.identity_of``); ``totals`` counts ``TOTAL_KEYS``
    (and ``duplicates`` once a commit has counted them)."""

    identity: dict[str, Any]
    # The committed size of each output file, by name (events, failures, calls).
    sizes: dict[str, int]
    totals: dict[str, int]
    failure_codes: dict[str, int]
    completed: bool = False
    invocations: int = 0
    elapsed_s: float = 0.0
    # Of each output file, the checksum of its committed part's end (``files.tail_checksum``);
    # None for a file whose end is not known (a ledger from before tails were kept).
    tails: dict[str, int | None] = field(default_factory=dict)
    # Every byte the last run appended was committed: bytes found past a size are not ours.
    clean: bool = False
    # What a run saw something else do to an output file, until the next open has looked.
    changed: str | None = None
    # A retry-failed run took calls on again: the failures file is to be compacted.
    failures_dirty: bool = False
    failures_swap: FailuresSwap | None = None
    # How the last run began and ended (the record ``RunRecord`` keeps too), for ``status``.
    last_run: dict[str, Any] | None = None
    # A listing run's place in the call list, and the time of it (ISO 8601) if known.
    list_cursor: str | None = None
    list_cursor_time: str | None = None

    @classmethod
    def new(cls, identity: dict[str, Any], names: list[str]) -> JobState:
        """The state of a job not begun, writing the output files ``names``."""
        return cls(identity, dict.fromkeys(names, 0), dict.fromkeys(TOTAL_KEYS, 0), {})

    @classmethod
    def from_json(cls, data: bytes | str, ledger: Path) -> JobState:
        """The state ``data`` holds, the meta row of ``ledger``: ``ConfigError`` for one this
        version of harvester did not write, or one that is damaged."""
        try:
            meta = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise damaged(ledger) from exc
        if not isinstance(meta, dict):
            raise damaged(ledger)
        if meta.get("schema") != SCHEMA_VERSION:
            raise ConfigError(
                f"{ledger.parent} was written by another harvester version; use --fresh"
            )
        if not _well_formed(meta):
            raise damaged(ledger)
        return cls(
            identity=meta["identity"],
            sizes=meta["sizes"],
            totals=meta["totals"],
            failure_codes=meta["failure_codes"],
            completed=meta["completed"],
            invocations=meta["invocations"],
            elapsed_s=meta["elapsed_s"],
            tails=meta.get("tails", {}),
            clean=bool(meta.get("clean", False)),
            changed=meta.get("changed"),
            failures_dirty=bool(meta.get("failures_dirty", False)),
            failures_swap=meta.get("failures_swap"),
            last_run=meta.get("last_run"),
            list_cursor=meta.get("list_cursor"),
            list_cursor_time=meta.get("list_cursor_time"),
        )

    def to_json(self) -> bytes:
        """The state as the meta row keeps it: the keys it always has, and of the others those
        that say something (as they were written before this was a class)."""
        meta: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "identity": self.identity,
            "sizes": self.sizes,
            "totals": self.totals,
            "failure_codes": self.failure_codes,
            "completed": self.completed,
            "invocations": self.invocations,
            "elapsed_s": self.elapsed_s,
            "tails": self.tails,
            "clean": self.clean,
        }
        if self.changed is not None:
            meta["changed"] = self.changed
        if self.failures_dirty:
            meta["failures_dirty"] = True
        if self.failures_swap is not None:
            meta["failures_swap"] = self.failures_swap
        if self.last_run is not None:
            meta["last_run"] = self.last_run
        if self.list_cursor is not None:  # a listing run's: the two go together
            meta["list_cursor"] = self.list_cursor
            meta["list_cursor_time"] = self.list_cursor_time
        return orjson.dumps(meta)

    def after(
        self, batch: Batch, again: int, counters: dict[str, int], elapsed_s: float
    ) -> JobState:
        """The state once ``batch`` is committed, made aside (this one is left as it is): its
        calls, events and failures by code counted (``again`` of its calls were counted before,
        as failed, and were taken on again), the job's request ``counters`` and ``elapsed_s``
        as they stand now, and a listing run's place. The sizes and tails are the journal's."""
        totals = dict(self.totals)
        totals["calls"] += batch.ok + batch.failed - again
        totals["ok"] += batch.ok
        totals["failed"] += batch.failed - again
        totals["events"] += batch.event_count
        totals.update({key: counters[key] for key in RUN_KEYS})
        # Every pass over the input meets its duplicates again: the most one pass met.
        totals["duplicates"] = max(totals.get("duplicates", 0), counters.get("duplicates", 0))
        codes = Counter(self.failure_codes)
        codes.update(batch.failure_codes)
        state = dataclasses.replace(
            self, totals=totals, failure_codes=dict(codes), elapsed_s=elapsed_s
        )
        if batch.list_cursor is not None:
            state.list_cursor = batch.list_cursor
            time = batch.list_cursor_time
            state.list_cursor_time = time.isoformat() if time is not None else None
        return state

    def snapshot(self) -> dict[str, Any]:
        """The whole job's counters, as ``RunStats.job`` holds them."""
        return {
            **self.totals,
            "failures_by_code": dict(self.failure_codes),
            "elapsed_s": round(self.elapsed_s, 3),
            "bytes": sum(self.sizes.values()),
            "invocations": self.invocations,
            "completed": self.completed,
        }


def _well_formed(meta: dict[str, Any]) -> bool:
    """Whether the meta row ``meta`` holds what harvester writes, of the types it writes."""
    sizes, totals = meta.get("sizes"), meta.get("totals")
    return (
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
        and all(isinstance(meta.get(key), str | None) for key in _TEXTS)
        and isinstance(meta.get("last_run"), dict | None)
        and _swap_well_formed(meta.get("failures_swap"))
    )


# The optional entries that are text when present.
_TEXTS = ("changed", "list_cursor", "list_cursor_time")


def _swap_well_formed(swap: object) -> bool:
    """A failures file being swapped in: its temporary path, size and tail, as written."""
    if swap is None:
        return True
    return (
        isinstance(swap, dict)
        and isinstance(swap.get("tmp"), str)
        and _count(swap.get("size"))
        and (swap.get("tail") is None or _count(swap.get("tail")))
    )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_state(connection: sqlite3.Connection, ledger: Path) -> JobState | None:
    """The state in the meta row of ``ledger`` (open as ``connection``): None for a new
    ledger; ``ConfigError`` as ``JobState.from_json`` says."""
    row = connection.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    return None if row is None else JobState.from_json(row[0], ledger)


def save_state(connection: sqlite3.Connection, state: JobState) -> None:
    """Write ``state`` as the meta row (in the transaction open on ``connection``)."""
    connection.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('state', ?)", (state.to_json(),)
    )

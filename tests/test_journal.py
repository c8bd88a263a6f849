"""The journal: every event lands exactly once, however and whenever the process dies; the
ledger, not the files, says what counts."""

from __future__ import annotations

import gzip
import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.errors import AlreadyRunning, ConfigError, OutputError
from harvester.ids import CallRef
from harvester.store.batch import Batch
from harvester.store.journal import Journal, Verdict
from harvester.store.ledger import FAILED, OK, state_dir

COUNTERS = {"requests": 0, "retries": 0, "rate_limited": 0}
IDENTITY = {"input": "calls.txt"}


def paths_in(folder: Path, suffix: str = "") -> dict[str, Path]:
    return {
        "events": folder / f"e.ndjson{suffix}",
        "failures": folder / f"e.failures.ndjson{suffix}",
    }


def harvested(*calls: str) -> Batch:
    """A batch of calls harvested, one event each, on input lines 1, 2, ..."""
    batch = Batch(ok=len(calls), event_count=len(calls))
    for line, call in enumerate(calls, 1):
        batch.events += b'{"callId":"%s"}\n' % call.encode()
        batch.rows.append((call, line, OK))
    return batch


def test_claims_say_new_done_or_duplicate(tmp_path: Path) -> None:
    journal = Journal.open(paths_in(tmp_path), IDENTITY)
    assert journal.claim([CallRef("c-1", 1), CallRef("c-2", 2), CallRef("c-1", 3)]) == [
        Verdict.NEW,
        Verdict.NEW,
        Verdict.DUPLICATE,  # on its way already, from line 1
    ]
    journal.commit(harvested("c-1", "c-2"), COUNTERS, 0.0)
    journal.close()

    again = Journal.open(paths_in(tmp_path), IDENTITY)
    # Done on the same line: skipped; the same call on another line: a duplicate.
    assert again.claim([CallRef("c-1", 1), CallRef("c-2", 5), CallRef("c-3", 3)]) == [
        Verdict.DONE,
        Verdict.DUPLICATE,
        Verdict.NEW,
    ]
    again.close()


def killed_mid_commit(paths: dict[str, Path]) -> None:
    """A process that commits one call, appends part of the next batch, and is killed."""
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            journal = Journal.open(paths, IDENTITY)
            journal.commit(harvested("c-1"), COUNTERS, 0.0)
            with paths["events"].open("ab") as events:
                events.write(b'{"callId":"c-2"}\n{"callId":"c-')
        finally:
            os._exit(0)
    assert os.waitpid(child, 0)[1] == 0


def test_what_a_crash_left_past_the_last_commit_is_cut_back_on_open(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    killed_mid_commit(paths)
    committed = paths["events"].read_bytes().split(b'{"callId":"c-2"}')[0]

    reopened = Journal.open(paths, IDENTITY)

    assert paths["events"].read_bytes() == committed
    assert reopened.claim([CallRef("c-2", 2)]) == [Verdict.NEW], "fetched again, so written once"
    reopened.close()


def test_bytes_past_a_clean_end_are_refused_not_cut_off(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    journal = Journal.open(paths, IDENTITY)
    journal.commit(harvested("c-1"), COUNTERS, 0.0)
    size = paths["events"].stat().st_size
    journal.close()  # every byte written was committed: a clean end
    with paths["events"].open("ab") as events:  # someone else's
        events.write(b'{"callId":"c-mine"}\n')

    with pytest.raises(ConfigError, match=f"truncate -s {size}"):
        Journal.open(paths, IDENTITY)

    assert paths["events"].read_bytes().endswith(b'{"callId":"c-mine"}\n'), "left as it was"
    os.truncate(paths["events"], size)  # the remedy
    Journal.open(paths, IDENTITY).close()


def test_a_compressed_output_is_valid_gzip_after_every_commit(tmp_path: Path) -> None:
    paths = paths_in(tmp_path, ".gz")
    journal = Journal.open(paths, IDENTITY)
    assert gzip.decompress(paths["events"].read_bytes()) == b"", "valid while still empty"
    assert gzip.decompress(paths["failures"].read_bytes()) == b""
    journal.commit(harvested("c-1"), COUNTERS, 0.0)
    journal.commit(harvested("c-2"), COUNTERS, 0.0)
    journal.close()
    assert gzip.decompress(paths["events"].read_bytes()).count(b"callId") == 2


def test_a_job_is_resumed_only_by_the_same_run(tmp_path: Path) -> None:
    Journal.open(paths_in(tmp_path), IDENTITY).close()
    with pytest.raises(ConfigError, match="belongs to another run"):
        Journal.open(paths_in(tmp_path), {"input": "other.txt"})
    Journal.open(paths_in(tmp_path), {"input": "other.txt"}, fresh=True).close()


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    journal = Journal.open(paths_in(tmp_path), IDENTITY)
    with pytest.raises(AlreadyRunning, match=f"another harvester \\(pid {os.getpid()}\\)"):
        Journal.open(paths_in(tmp_path), IDENTITY)
    journal.close()
    Journal.open(paths_in(tmp_path), IDENTITY).close()


def test_a_lost_failures_file_is_rebuilt_from_the_ledger(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    journal = Journal.open(paths, IDENTITY)
    batch = Batch(failures=bytearray(b'{"callId":"c-9","code":"http-500"}\n'), failed=1)
    batch.rows = [("c-9", 9, FAILED)]
    journal.commit(batch, COUNTERS, 0.0)
    journal.close()
    paths["failures"].unlink()

    Journal.open(paths, IDENTITY).close()

    assert b'"callId":"c-9"' in paths["failures"].read_bytes()
    assert b'"code":"reason-lost"' in paths["failures"].read_bytes()
    assert state_dir(paths["events"]).is_dir()


def test_a_failures_swap_cut_short_by_a_crash_is_finished_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = paths_in(tmp_path)
    journal = Journal.open(paths, {"input": "x"})
    batch = Batch(failures=bytearray(b'{"callId":"c-1"}\n{"callId":"c-2"}\n'), failed=2)
    batch.rows = [("c-1", 1, FAILED), ("c-2", 2, FAILED)]
    journal.commit(batch, COUNTERS, 0.0)
    journal.retake(["c-1"])  # retry-failed takes c-1 on again, and this time it works
    journal.commit(harvested("c-1"), COUNTERS, 0.0)
    # The compaction writes the new file and the ledger records the swap; then a crash,
    # before the rename.
    with monkeypatch.context() as crash:
        crash.setattr("harvester.store.failures.finish_swap", lambda *args: None)
        journal.compact_failures()
    journal.close()
    assert paths["failures"].read_bytes().count(b"c-1") == 1, "not renamed over yet"

    reopened = Journal.open(paths, {"input": "x"})
    reopened.close()

    assert paths["failures"].read_bytes() == b'{"callId":"c-2"}\n'
    assert not list(tmp_path.glob(".*.tmp"))
    assert reopened.state.failures_swap is None
    assert (reopened.state.totals["ok"], reopened.state.totals["failed"]) == (1, 1)


def test_a_job_refused_as_it_is_opened_leaves_nothing_behind(tmp_path: Path) -> None:
    failures = tmp_path / "f.ndjson"
    failures.write_text('{"callId": "c-1"}\n')  # data no ledger vouches for
    paths = {"events": tmp_path / "new" / "e.ndjson", "failures": failures}

    with pytest.raises(ConfigError, match="holds no harvester state"):
        Journal.open(paths, IDENTITY)

    assert not (tmp_path / "new").exists(), "neither the state folder nor the one made for it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.ndjson"]


def test_another_run_is_told_which_settings_differ_in_words(tmp_path: Path) -> None:
    first = {
        "input": "/data/calls-a.txt",
        "size": 120,
        "head_sha256": "a" * 64,
        "shard": "0/4",
        "user_id": "u-first",
    }
    Journal.open(paths_in(tmp_path), first).close()
    other = {**first, "input": "/data/calls-b.txt", "head_sha256": "b" * 64, "shard": None}

    with pytest.raises(ConfigError) as refused:
        Journal.open(paths_in(tmp_path), other)

    said = str(refused.value)
    assert said == (
        "this output belongs to another run: it was started with the input file "
        "/data/calls-a.txt, not the input file /data/calls-b.txt; --shard was 0/4 for it, and "
        "is not given now. Use the same settings as that run to resume it, or another --output, "
        "or --fresh to discard it and start over"
    )
    changed = {**first, "size": 130, "head_sha256": "c" * 64, "user_id": "u-second"}
    with pytest.raises(ConfigError) as refused:
        Journal.open(paths_in(tmp_path), changed)
    said = str(refused.value)
    assert "its input file /data/calls-a.txt has changed since" in said
    assert "user_id was u-first for it, and is u-second now" in said
    assert "{" not in said and "a" * 64 not in said and "c" * 64 not in said


class RefusingRows:
    """A ledger connection whose next rows are refused as a full disk refuses them, while the
    small write of how the run ended still goes through (as it may, on a disk near full)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def executemany(self, *args: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __enter__(self) -> Any:
        return self._connection.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._connection.__exit__(*exc)


def test_a_commit_the_disk_refused_is_not_recorded_by_what_is_written_after_it(
    tmp_path: Path,
) -> None:
    """The data of a batch is appended, its ledger rows refused: the end of the run recorded
    after it must not record the batch's sizes, or the next run would keep the batch's bytes
    and fetch its calls again (each event twice)."""
    paths = paths_in(tmp_path)
    journal = Journal.open(paths, IDENTITY)
    journal.commit(harvested("c-1"), COUNTERS, 0.0)
    connection = journal._db
    journal._db = RefusingRows(connection)  # type: ignore[assignment]
    with pytest.raises(OutputError):
        journal.commit(harvested("c-2", "c-3"), COUNTERS, 0.0)
    journal._db = connection
    journal.note_run(status="output-error", ended_at="now")
    journal.close()

    again = Journal.open(paths, IDENTITY)
    assert again.claim([CallRef("c-1", 1), CallRef("c-2", 1), CallRef("c-3", 2)]) == [
        Verdict.DONE,
        Verdict.NEW,
        Verdict.NEW,
    ]
    assert again.state.totals["calls"] == 1
    again.close()
    assert paths["events"].read_bytes() == b'{"callId":"c-1"}\n', "the refused batch cut off"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("failures_swap", 5),
        ("failures_swap", {"tmp": "x", "size": -1, "tail": None}),
        ("last_run", "yesterday"),
        ("list_cursor", 7),
        ("changed", ["cut"]),
    ],
)
def test_a_state_row_of_the_wrong_shape_is_a_damaged_ledger_not_a_crash(
    tmp_path: Path, key: str, value: object
) -> None:
    journal = Journal.open(paths_in(tmp_path), IDENTITY)
    journal.commit(harvested("c-1"), COUNTERS, 0.0)
    journal.close()
    ledger = state_dir(paths_in(tmp_path)["events"]) / "ledger.sqlite"
    with sqlite3.connect(ledger) as db:
        (row,) = db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
        state = {**orjson.loads(row), key: value}
        db.execute("UPDATE meta SET value = ? WHERE key = 'state'", (orjson.dumps(state),))
    db.close()

    with pytest.raises(ConfigError, match="does not hold what harvester wrote"):
        Journal.open(paths_in(tmp_path), IDENTITY)

"""The journal: every event lands exactly once, however and whenever the process dies; the
ledger, not the files, says what counts."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from harvester.errors import AlreadyRunning, ConfigError
from harvester.journal import Batch, Journal, Verdict
from harvester.ledger import FAILED, OK, state_dir

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
    assert journal.claim([("c-1", 1), ("c-2", 2), ("c-1", 3)]) == [
        Verdict.NEW,
        Verdict.NEW,
        Verdict.DUPLICATE,  # on its way already, from line 1
    ]
    journal.commit(harvested("c-1", "c-2"), COUNTERS, 0.0)
    journal.close()

    again = Journal.open(paths_in(tmp_path), IDENTITY)
    # Done on the same line: skipped; the same call on another line: a duplicate.
    assert again.claim([("c-1", 1), ("c-2", 5), ("c-3", 3)]) == [
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
    assert reopened.claim([("c-2", 2)]) == [Verdict.NEW], "fetched again, so written once"
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
        crash.setattr("harvester.failures.finish_swap", lambda *args: None)
        journal.compact_failures()
    journal.close()
    assert paths["failures"].read_bytes().count(b"c-1") == 1, "not renamed over yet"

    reopened = Journal.open(paths, {"input": "x"})
    reopened.close()

    assert paths["failures"].read_bytes() == b'{"callId":"c-2"}\n'
    assert not list(tmp_path.glob(".*.tmp"))
    assert "failures_swap" not in reopened.meta
    assert (reopened.meta["totals"]["ok"], reopened.meta["totals"]["failed"]) == (1, 1)

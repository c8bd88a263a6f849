"""Files changed under a running harvester: an output cut, removed, replaced or written into by
something else stops the run at the next commit (exit 4, naming the file), nothing after it is
committed, and the next run refuses the job (exit 2, with the remedy) instead of going on."""

from __future__ import annotations

import gzip
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from harvester.errors import ConfigError, OutputError
from harvester.run.job import harvest
from harvester.sim.server import SimConfig, Simulator
from harvester.store.files import TAIL, AppendFile
from harvester.store.status import job_status

from .conftest import (
    FakeClock,
    assert_exactly_once,
    committed,
    ledger_state,
    make_settings,
    output_of,
    read_ndjson,
    run_harvester,
    write_calls,
)


class Meddling(Simulator):
    """The simulator, but for one thing done to a file of the job writing ``output`` once its
    ledger vouches for a first batch in it, while the run goes on."""

    def __init__(
        self, output: Path, victim: str, meddle: Callable[[Path, int], None], clock: FakeClock
    ) -> None:
        super().__init__(SimConfig(calls=60), clock=clock)
        self.output, self.victim = output, victim
        self.meddle = meddle
        self.meddled_at: int | None = None

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self.meddled_at is None and committed(self.output, self.victim) > EMPTY_GZIP_SIZE:
            path = ledger_state(self.output)["identity"][f"{self.victim}_path"]
            self.meddle(Path(path), committed(self.output, self.victim))
            self.meddled_at = len(self.log)
        return await super()._events(request)


EMPTY_GZIP_SIZE = len(gzip.compress(b"", mtime=0))  # what a new .gz output holds at once


def cut(path: Path, committed: int) -> None:
    os.truncate(path, 0)


def replace(path: Path, committed: int) -> None:
    other = path.with_name("other")
    other.write_bytes(b"x" * path.stat().st_size)  # the same size, not the same file
    other.replace(path)


def append(path: Path, committed: int) -> None:
    with path.open("ab") as file:
        file.write(b'{"callId":"c-forged","name":"hangup"}\n')


def overwrite(path: Path, committed: int) -> None:
    with path.open("r+b") as file:  # dd conv=notrunc, near the end of what was committed
        file.seek(max(0, committed - 30))
        file.write(b"XXXXXXXX")


def overwrite_end(path: Path, committed: int) -> None:
    # Near the end of the file as it is now: near the end the ledger vouches for races the
    # writer's thread, whose commit in flight can move the file on by more than the bytes
    # harvester checks (docs/output.md).
    overwrite(path, path.stat().st_size)


def remove(path: Path, committed: int) -> None:
    path.unlink()


MEDDLING: dict[str, tuple[Callable[[Path, int], None], str, str | None]] = {
    # (cut to nothing; what the run appends before its next check may be there too)
    "cut": (cut, r"was cut to \d+ bytes", "shorter"),
    "removed": (remove, "was removed", "missing"),
    "replaced": (replace, "was replaced by another file", "does not end in the bytes"),
    "written into": (append, "grew by", "bytes past the"),
    "written over": (overwrite_end, "was written into", "does not end in the bytes"),
}


@pytest.mark.parametrize("how", list(MEDDLING))
@pytest.mark.parametrize("name", ["events.ndjson", "events.ndjson.gz"])
async def test_an_output_changed_under_the_run_stops_it_and_the_next_run_refuses(
    clock: FakeClock, tmp_path: Path, how: str, name: str
) -> None:
    meddle, said, refused = MEDDLING[how]
    output = tmp_path / "out" / name
    async with Meddling(output, "events", meddle, clock) as api:
        ids = api.call_ids()
        write_calls(tmp_path, ids)
        settings = make_settings(api, tmp_path, output=output, commit_calls=5, concurrency=2)

        with pytest.raises(OutputError, match=said) as caught:
            await harvest(settings, clock=clock)

        assert api.meddled_at is not None and api.meddled_at < len(ids)
        assert str(output) in str(caught.value) and "--fresh" in str(caught.value)
        status = job_status(output)
        assert status["last_run"]["status"] == "output-error"
        assert status["calls"] < len(ids), "nothing after the change counts as harvested"
        assert status["damaged"], "status says what is wrong"
        with pytest.raises(ConfigError, match=refused) as again:
            await harvest(settings, clock=clock)
        assert "--fresh" in str(again.value) and str(output) in str(again.value)
        if how != "written into":
            return
        # Someone else's bytes past what was committed: once they are cut off, as the message
        # says, the job goes on.
        size = re.search(r"truncate -s (\d+) ", str(again.value))
        assert size is not None
        os.truncate(output, int(size.group(1)))
        stats = await harvest(settings, clock=clock)
        assert stats.job["ok"] == len(ids)
        assert_exactly_once(output, ids)


@pytest.mark.parametrize("big", [False, True], ids=["small append", "append past the tail"])
def test_a_write_into_the_committed_end_while_an_append_is_under_way_is_caught(
    tmp_path: Path, big: bool
) -> None:
    """The race a run meets: another writer's bytes land between the check before an append
    and the append itself. Once the append is bigger than what is checked, the next check
    alone would no longer see them: the check right after the append does."""
    path = tmp_path / "events.ndjson"
    file = AppendFile.open(path, 0, "run with --fresh", fsync=lambda fd: None)
    committed = file.append(b'{"callId":"c-1"}\n' * 100)

    def meddle(fd: int) -> None:  # once the append is written, before it is checked
        overwrite(path, committed)

    file._fsync = meddle
    try:
        with pytest.raises(OutputError, match="was written into"):
            file.append(b"y" * (2 * TAIL if big else 10))
    finally:
        file.close()


async def test_a_failures_file_changed_under_the_run_stops_it_and_is_rebuilt_after(
    clock: FakeClock, tmp_path: Path
) -> None:
    failures = tmp_path / "out" / "events.failures.ndjson"
    async with Meddling(tmp_path / "out" / "events.ndjson", "failures", cut, clock) as api:
        ids = api.call_ids()
        unknown = [f"c-unknown{i:03d}" for i in range(30)]
        write_calls(tmp_path, [*ids[:5], *unknown, *ids[5:]])
        settings = make_settings(api, tmp_path, commit_calls=5, concurrency=2)

        with pytest.raises(OutputError, match="was cut to 0 bytes"):
            await harvest(settings, clock=clock)
        stats = await harvest(settings, clock=clock)

    assert (stats.job["ok"], stats.job["failed"]) == (len(ids), len(unknown))
    assert sorted(f["callId"] for f in read_ndjson(failures)) == sorted(unknown)
    assert_exactly_once(output_of(settings), ids)


def test_the_command_says_exit_4_then_2_and_status_tells_what_happened(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids))
    output = tmp_path / "events.ndjson"
    args = ["run", "-i", str(tmp_path / "calls.txt"), "-o", str(output), "--no-progress"]
    args += ["--rate", "40", "--commit-every", "2"]

    def cut_once_committed() -> None:
        deadline = time.monotonic() + 20
        while not committed(output):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.truncate(output, 0)

    cutter = threading.Thread(target=cut_once_committed)
    cutter.start()
    done = run_harvester(sim_process, *args)
    cutter.join()
    again = run_harvester(sim_process, *args)
    status = run_harvester(sim_process, "status", "-o", str(output))

    assert done.returncode == 4, done.stderr
    assert b"was cut to 0 bytes" in done.stderr and str(output).encode() in done.stderr
    assert b"Traceback" not in done.stderr
    assert again.returncode == 2, again.stderr
    assert b"shorter" in again.stderr and b"--fresh" in again.stderr
    assert status.returncode == 0
    assert b"output-error" in status.stdout and b"shorter" in status.stdout

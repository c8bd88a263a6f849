"""``--dry-run``: the call list read, or the window listed, and each call judged as the run would
judge it (new, done earlier, duplicate, another shard's, not a call id), with no event fetched
and nothing written; the counts are what the real run then does."""

from __future__ import annotations

import asyncio
import errno
import gzip
import os
import signal
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.errors import ConfigError
from harvester.run.dryrun import Tally, dry_run, dry_run_lines
from harvester.run.job import harvest
from harvester.run.nights import harvest_nights
from harvester.sim.server import SimConfig, Simulator

from .conftest import (
    FakeClock,
    Forked,
    make_settings,
    run_harvester,
    start_harvester,
    wait_until,
    write_calls,
)


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``, with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def writer_of(process: Forked, fifo: Path) -> int:
    """Wait until ``process`` has ``fifo`` open to read (until then, opening it to write without
    waiting fails with ENXIO); the write end, open, which the caller closes."""
    writer: list[int] = []

    def opened_to_read() -> bool:
        assert process.poll() is None, "the run ended before it opened the FIFO"
        try:
            writer.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            return False
        return True

    wait_until(opened_to_read, "the run has the FIFO open to read", timeout=20)
    return writer[0]


def event_requests(sim: Simulator) -> list[str]:
    return [path for path in sim.requests if path.endswith("/events")]


def counts(tally: Tally) -> dict[str, int]:
    names = ("new", "done", "duplicates", "other_shard", "invalid")
    return {name: getattr(tally, name) for name in names}


async def test_a_call_list_is_judged_as_the_run_then_does_with_nothing_written(
    sim: Simulator, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path.parent / f"{tmp_path.name}-scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the calls seen are kept
    ids = sim.call_ids()[:40]
    # Three duplicates, a hostile id, a line that is no call id; then a run stopped half way.
    lines = [*ids, ids[0], ids[5], ids[5], "c-../../v1/users/u-other/calls", "not a call id"]
    write_calls(tmp_path, lines)
    settings = make_settings(sim, tmp_path, commit_calls=5)
    before = tree(tmp_path)

    [first] = await dry_run(settings, clock=clock)

    assert counts(first) == {"new": 40, "done": 0, "duplicates": 3, "other_shard": 0, "invalid": 2}
    assert first.state == "not started"
    assert tree(tmp_path) == before, "nothing written: no output, no state folder"
    assert sim.requests == [], "a call list needs no request at all"
    assert list(scratch.iterdir()) == [], "the scratch database is gone"

    stop = asyncio.Event()
    stats = await _stopped_after(settings, clock, stop, sim, calls=15)
    done_before = stats.job["calls"]
    assert 0 < done_before < len(lines)
    sim.log.clear()
    before = tree(tmp_path)

    [second] = await dry_run(settings, clock=clock)

    assert second.state == "unfinished"
    assert tree(tmp_path) == before, "the ledger read, not touched"
    assert event_requests(sim) == []
    # What the real run now does: exactly the new ones fetched, the rest skipped as said.
    rest = await harvest(settings, clock=clock)
    assert len(event_requests(sim)) == second.new
    assert rest.skipped == second.done and rest.duplicates == second.duplicates
    assert rest.invalid == second.invalid
    assert second.new + second.done + second.invalid == 42  # 40 calls and 2 bad lines, once


async def _stopped_after(
    settings: Any, clock: FakeClock, stop: asyncio.Event, sim: Simulator, calls: int
) -> Any:
    """A run of ``settings`` stopped once ``calls`` calls' events have been asked for."""

    async def watch() -> None:
        while len(event_requests(sim)) < calls:
            await asyncio.sleep(0)
        stop.set()

    watcher = asyncio.create_task(watch())
    try:
        return await harvest(settings, clock=clock, stop=stop)
    finally:
        watcher.cancel()


async def test_shards_split_the_list_and_a_completed_job_has_nothing_to_do(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()[:60]
    write_calls(tmp_path, ids)
    halves = []
    for index in (0, 1):
        output = tmp_path / f"out-{index}" / "events.ndjson"
        settings = make_settings(sim, tmp_path, shard=f"{index}/2", output=output)
        [tally] = await dry_run(settings, clock=clock)
        stats = await harvest(settings, clock=clock)
        assert tally.new == stats.job["ok"] and tally.other_shard == stats.other_shard
        halves.append(tally.new)
        [again] = await dry_run(settings, clock=clock)
        assert again.state == "completed" and again.new == 0
        assert "nothing to do" in dry_run_lines([again])[1]
    assert sum(halves) == len(ids) and all(halves)


async def test_a_dry_run_refuses_what_the_run_would_refuse(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, sim.call_ids()[:5])
    await harvest(make_settings(sim, tmp_path), clock=clock)
    another = make_settings(sim, tmp_path, shard="0/2")  # the same output, another job
    with pytest.raises(ConfigError, match="another"):
        await dry_run(another, clock=clock)
    [fresh] = await dry_run(make_settings(sim, tmp_path), clock=clock, fresh=True)
    assert fresh.new == 5 and "would be discarded" in (fresh.note or "")


ANCHOR = datetime(2026, 11, 26, tzinfo=UTC)


async def test_nights_are_judged_each_in_one_listing_and_match_the_run(
    clock: FakeClock, tmp_path: Path
) -> None:
    clock.now = (ANCHOR + timedelta(hours=3)).timestamp()
    async with Simulator(SimConfig(calls=400, days=4, anchor=ANCHOR), clock=clock) as sim:
        output = tmp_path / "out" / "events-{date}.ndjson"
        now = ANCHOR + timedelta(hours=3)

        def nightly(nights: int) -> Any:
            return make_settings(sim, tmp_path, now=now, input=None, output=output, nights=nights)

        await harvest_nights(nightly(1), clock=clock)  # yesterday done
        sim.log.clear()
        before = tree(tmp_path)

        tallies = await dry_run(nightly(3), clock=clock)

        assert tree(tmp_path) == before and event_requests(sim) == []
        days = [str(ANCHOR.date() - timedelta(days=back)) for back in (3, 2, 1)]
        assert [t.night for t in tallies] == days
        assert tallies[-1].state == "completed" and tallies[-1].new == 0
        stats = await harvest_nights(nightly(3), clock=clock)
        by_night = {entry["date"]: entry for entry in stats.nights}
        for tally in tallies[:-1]:
            assert tally.state == "not started"
            assert tally.new == by_night[str(tally.night)]["ok"] > 0
        assert sum(t.new for t in tallies) == len(event_requests(sim))


def test_the_command_prints_the_plan_and_writes_nothing(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()[:10]
    calls = tmp_path / "calls.txt"
    calls.write_text("\n".join([*ids, ids[0], "junk id"]) + "\n")
    before = tree(tmp_path)
    output = str(tmp_path / "out" / "events.ndjson")

    done = run_harvester(sim_process, "run", "--dry-run", "-i", str(calls), "-o", output)

    assert done.returncode == 0, done.stderr
    said = done.stdout.decode()
    assert "nothing was fetched or written" in said
    assert "would fetch 10 calls; skipped: 1 duplicate; 1 line that names no call" in said
    assert tree(tmp_path) == before

    json_done = run_harvester(
        sim_process, "run", "-n", "-i", str(calls), "-o", output, "--log-format", "json"
    )
    document = orjson.loads(json_done.stdout)
    assert document["dry_run"] is True and document["jobs"][0]["new"] == 10
    refused = run_harvester(sim_process, "run", "-n", "--nights", "2", "-o", output)
    assert refused.returncode == 2 and b"{date}" in refused.stderr
    assert tree(tmp_path) == before


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_dry_run_at_once_and_it_leaves_nothing(
    sim_process: dict[str, str], tmp_path: Path, signum: int, code: int
) -> None:
    """Even one blocked on a FIFO whose writer sends nothing: exit 128 + the signal, its scratch
    folder gone."""
    fifo = tmp_path / "calls.fifo"
    os.mkfifo(fifo)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**sim_process, "TMPDIR": str(scratch)}
    output = tmp_path / "out" / "events.ndjson"
    process = start_harvester(env, "run", "-n", "-i", str(fifo), "-o", str(output))
    writer = writer_of(process, fifo)  # the run has the FIFO open, and waits for its lines
    try:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=20)  # the writer open, silent: no end of input
    finally:
        os.close(writer)
    assert process.returncode == code, stderr
    assert b"nothing was fetched or written" in stderr
    assert list(scratch.iterdir()) == [] and not output.parent.exists()


def test_a_dry_run_refuses_a_file_the_run_would_not_cut_and_says_where_input_is_damaged(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()[:30]
    calls = tmp_path / "calls.txt"
    calls.write_text("\n".join(ids) + "\n")
    output = tmp_path / "events.ndjson"
    output.write_text("someone's data\n")
    refused = run_harvester(sim_process, "run", "-n", "-i", str(calls), "-o", str(output))
    assert refused.returncode == 2 and b"holds no harvester state" in refused.stderr
    output.unlink()

    cut = tmp_path / "calls.txt.gz"
    whole = gzip.compress(("\n".join(ids * 400) + "\n").encode())
    cut.write_bytes(whole[: len(whole) * 2 // 3])  # damaged after some lines
    done = run_harvester(sim_process, "run", "-n", "-i", str(cut), "-o", str(output))
    assert done.returncode == 2, done.stderr
    said = done.stdout.decode()
    assert "would fetch 30 calls" in said and "the run would stop where input is damaged" in said
    assert not output.exists()

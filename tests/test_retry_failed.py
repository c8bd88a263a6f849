"""retry-failed: what failed for passing reasons is harvested again, once; the rest stays listed."""

from __future__ import annotations

import asyncio
import gzip
import random
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.errors import ConfigError
from harvester.report.summary import summary_document
from harvester.run.job import harvest, retry_failed
from harvester.sim.server import Simulator

from .conftest import (
    FakeClock,
    assert_exactly_once,
    invocations,
    make_settings,
    opened,
    output_of,
    read_ndjson,
    run_harvester,
    start_harvester,
    write_calls,
)

UNKNOWN = ["c-unknowncall0000000001", "c-unknowncall0000000002"]


async def first_run(sim: Simulator, clock: FakeClock, tmp_path: Path) -> list[str]:
    """A run where about a third of the calls fail with 503s and two are unknown."""
    ids = sim.call_ids()
    (tmp_path / "calls.txt").write_text("\n".join([*ids, *UNKNOWN, "c-bad/id"]))
    sim.config.faults = {"503": 0.35}
    sim.config.max_faults_per_call = 100
    stats = await harvest(make_settings(sim, tmp_path, max_attempts=1), clock=clock)
    assert stats.failed > 10
    sim.config.faults = {}
    return ids


async def test_passing_failures_are_harvested_and_the_rest_stays_listed_once(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = await first_run(sim, clock, tmp_path)
    settings = make_settings(sim, tmp_path)
    before = read_ndjson(settings.failures_path)
    unavailable = {f["callId"] for f in before if f["code"] == "unavailable"}

    stats = await retry_failed(settings, clock=clock)

    assert_exactly_once(output_of(settings), ids)
    after = read_ndjson(settings.failures_path)
    assert Counter(f["callId"] for f in after) == Counter([*UNKNOWN, "c-bad/id"])
    assert (stats.job["calls"], stats.job["ok"], stats.job["failed"]) == (len(ids) + 3, len(ids), 3)
    assert stats.job["failures_by_code"] == {"call-not-found": 2, "invalid-call-id": 1}
    requested = {p.split("/")[-2] for p in sim.requests[-len(unavailable) :]}
    assert requested == unavailable, "only the calls that failed were asked for again"


async def test_unknown_calls_are_retried_only_when_asked(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    await first_run(sim, clock, tmp_path)
    settings = make_settings(sim, tmp_path)
    await retry_failed(settings, clock=clock)
    sim.log.clear()

    await retry_failed(settings, clock=clock)
    assert sim.requests == []

    await retry_failed(settings, clock=clock, include_not_found=True)
    asked = [p.split("/")[-2] for p in sim.requests if p.endswith("/events")]
    assert sorted(call for call in asked if call in UNKNOWN) == sorted(UNKNOWN)
    # and, to tell unknown calls from a wrong base URL, one call this job harvested before
    assert len(asked) == len(UNKNOWN) + 1
    after = read_ndjson(settings.failures_path)
    assert Counter(f["callId"] for f in after) == Counter([*UNKNOWN, "c-bad/id"])


async def test_a_later_run_of_the_same_job_still_resumes_cleanly(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = await first_run(sim, clock, tmp_path)
    settings = make_settings(sim, tmp_path)
    await retry_failed(settings, clock=clock)
    sim.log.clear()

    stats = await harvest(settings, clock=clock)

    assert sim.requests == [], "the job is complete: nothing fetched again"
    assert stats.job["ok"] == len(ids)
    assert_exactly_once(output_of(settings), ids)


async def test_nothing_to_retry_without_state(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="no harvester state"):
        await retry_failed(make_settings(sim, tmp_path), clock=clock)


@pytest.mark.slow
def test_the_command(sim_process: dict[str, str], tmp_path: Path) -> None:
    from .conftest import simulator_process

    with simulator_process(
        tmp_path, "--calls", "30", "--fault", "503=0.4", "--max-faults-per-call", "100"
    ) as env:
        ids = Path(env["IDS_FILE"]).read_text().split()
        (tmp_path / "calls.txt").write_text("\n".join([*ids, UNKNOWN[0]]))
        out = tmp_path / "out" / "e.ndjson"
        first = run_harvester(
            env,
            "run",
            "-i",
            str(tmp_path / "calls.txt"),
            "-o",
            str(out),
            "--max-attempts",
            "1",
            "--no-progress",
        )
        assert first.returncode == 1, first.stderr
    # A well-behaved simulator this time, on another port: the same registry (and ten more).
    summary = str(tmp_path / "s")
    again = run_harvester(sim_process, "retry-failed", "-o", str(out), "--summary", summary)
    assert again.returncode == 1, again.stderr  # the unknown call still fails
    assert_exactly_once(out, ids)
    assert [f["callId"] for f in read_ndjson(out.with_name("e.failures.ndjson"))] == [UNKNOWN[0]]


async def test_retry_failed_cut_short_after_a_commit_is_mended_by_the_next_open(
    sim: Simulator, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harvester.store.journal import Journal

    ids = await first_run(sim, clock, tmp_path)
    settings = make_settings(sim, tmp_path, commit_calls=2)

    compact = Journal.compact_failures
    compactions = 0

    def killed(self: Journal) -> None:
        nonlocal compactions
        compactions += 1
        if compactions > 1:  # the process dies after its commits, before compacting
            raise KeyboardInterrupt
        compact(self)

    with monkeypatch.context() as patch:
        patch.setattr(Journal, "compact_failures", killed)
        with pytest.raises(KeyboardInterrupt):
            await retry_failed(settings, clock=clock)
    stale = read_ndjson(settings.failures_path)
    assert len(stale) > 3, "harvested calls are still listed: the kill came before compaction"

    stats = await harvest(settings, clock=clock)  # run, as the user would, opens the journal

    after = read_ndjson(settings.failures_path)
    assert Counter(f["callId"] for f in after) == Counter([*UNKNOWN, "c-bad/id"])
    assert stats.job["failed"] == 3 and stats.job["ok"] == len(ids)


async def test_a_lost_failures_file_is_rebuilt_from_the_ledger_and_retried(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = await first_run(sim, clock, tmp_path)
    settings = make_settings(sim, tmp_path)
    failed = {f["callId"] for f in read_ndjson(settings.failures_path)}
    settings.failures_path.unlink()

    await harvest(settings, clock=clock)  # rebuilds it, with a warning

    rebuilt = read_ndjson(settings.failures_path)
    assert {f["callId"] for f in rebuilt} == failed
    assert {f["code"] for f in rebuilt if f["callId"] == "c-bad/id"} == {"invalid-call-id"}
    assert {f["code"] for f in rebuilt if f["callId"] in ids} == {"reason-lost"}

    stats = await retry_failed(settings, clock=clock, include_not_found=True)

    assert_exactly_once(output_of(settings), ids)
    assert Counter(f["callId"] for f in read_ndjson(settings.failures_path)) == Counter(
        [*UNKNOWN, "c-bad/id"]
    )
    assert stats.job["ok"] == len(ids)


@pytest.mark.parametrize("damage", [b"\x00", b"\xff"], ids=["zeroed", "garbage"])
async def test_a_damaged_gzip_failures_file_is_rebuilt_not_a_traceback(
    sim: Simulator, clock: FakeClock, tmp_path: Path, damage: bytes
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, [*ids[:5], *UNKNOWN])
    output = tmp_path / "out" / "events.ndjson.gz"
    settings = make_settings(sim, tmp_path, output=output)
    await harvest(settings, clock=clock)
    assert settings.failures_path.name == "events.failures.ndjson.gz"
    data = settings.failures_path.read_bytes()
    settings.failures_path.write_bytes(data[:12] + damage * (len(data) - 12))  # same size

    await retry_failed(settings, clock=clock, include_not_found=True)

    assert sorted(f["callId"] for f in read_gzip(settings.failures_path)) == sorted(UNKNOWN)


async def test_an_empty_gzip_failures_file_is_valid_gzip(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, sim.call_ids()[:3])
    settings = make_settings(sim, tmp_path, output=tmp_path / "out" / "events.ndjson.gz")

    await harvest(settings, clock=clock)

    assert subprocess.run(["gzip", "-t", str(settings.failures_path)], check=False).returncode == 0
    assert gzip.decompress(settings.failures_path.read_bytes()) == b""
    write_calls(tmp_path, [*sim.call_ids()[:3], UNKNOWN[0]])  # and once it has had lines
    await harvest(settings, clock=clock, fresh=True)
    await retry_failed(settings, clock=clock)
    assert [f["callId"] for f in read_gzip(settings.failures_path)] == [UNKNOWN[0]]


def read_gzip(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


@pytest.mark.slow
def test_retry_failed_killed_again_and_again_leaves_one_line_per_failed_call(
    tmp_path: Path,
) -> None:
    from .conftest import simulator_process

    with simulator_process(
        tmp_path, "--calls", "120", "--fault", "503=0.6", "--max-faults-per-call", "100"
    ) as env:
        ids = Path(env["IDS_FILE"]).read_text().split()
        (tmp_path / "calls.txt").write_text("\n".join(ids))
        out = tmp_path / "out" / "e.ndjson"
        common = ["-o", str(out), "--no-progress", "--commit-every", "2"]
        run = ["run", "-i", str(tmp_path / "calls.txt"), *common]
        first = run_harvester(env, *run, "--max-attempts", "1")
        assert first.returncode == 1, first.stderr
    (tmp_path / "slow").mkdir()
    with simulator_process(tmp_path / "slow", "--calls", "120", "--latency", "0.05") as env:
        rng = random.Random(4)
        for _ in range(3):
            before = invocations(out)
            again = start_harvester(
                env, "retry-failed", *common, "--concurrency", "2", stderr=False
            )
            opened(again, out, before)
            time.sleep(rng.uniform(0.1, 0.5))
            again.kill()
            again.wait()
            mended = run_harvester(env, *run)
            failures = read_ndjson(out.with_name("e.failures.ndjson"))
            harvested = {e["callId"] for e in read_ndjson(out)}
            assert len(failures) == len({f["callId"] for f in failures}), mended.stderr
            assert not harvested & {f["callId"] for f in failures}
            assert len(harvested) + len(failures) == len(ids)
        done = run_harvester(env, "retry-failed", *common)
    assert done.returncode == 0, done.stderr
    assert read_ndjson(out.with_name("e.failures.ndjson")) == []
    assert_exactly_once(out, ids)


async def test_a_failures_file_damaged_in_place_is_mended_by_one_retry_failed(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = await first_run(sim, clock, tmp_path)
    settings = make_settings(sim, tmp_path)
    data = bytearray(settings.failures_path.read_bytes())
    middle = len(data) // 2
    data[middle - 300 : middle + 300] = b"\x07" * 600  # same size: nothing looks cut short
    settings.failures_path.write_bytes(bytes(data))

    stats = await retry_failed(settings, clock=clock)

    assert_exactly_once(output_of(settings), ids)
    assert Counter(f["callId"] for f in read_ndjson(settings.failures_path)) == Counter(
        [*UNKNOWN, "c-bad/id"]
    )
    assert stats.job["ok"] == len(ids)


async def test_the_jobs_duplicates_are_remembered_after_retry_failed(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()[:10]
    (tmp_path / "calls.txt").write_text("\n".join([*ids, *ids[:3], UNKNOWN[0]]))
    first = await harvest(make_settings(sim, tmp_path), clock=clock)
    assert first.job["duplicates"] == 3

    again = await retry_failed(make_settings(sim, tmp_path), clock=clock, include_not_found=True)

    assert again.duplicates == 0 and again.job["duplicates"] == 3


async def test_retry_failed_on_an_unfinished_job_says_that_run_goes_on_with_it(
    sim: Simulator, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    write_calls(tmp_path, sim.call_ids())
    settings = make_settings(sim, tmp_path)
    sim.config.latency = 0.05
    stop = asyncio.Event()
    run = asyncio.create_task(harvest(settings, clock=clock, stop=stop))
    while len(sim.log) < 8:
        await asyncio.sleep(0.01)
    stop.set()  # a job begun, not finished
    assert not (await run).completed
    sim.config.latency = 0.0
    caplog.set_level(logging.INFO, logger="harvester")

    stats = await retry_failed(settings, clock=clock)

    assert "this job is not finished" in caplog.text and "`harvester run`" in caplog.text
    summary = summary_document(settings, stats, "completed", 0, datetime.now(UTC), 0.1)
    assert summary["job_completed"] is False, "its own work completed; the job's did not"

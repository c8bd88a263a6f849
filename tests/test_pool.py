"""A whole run against the simulator: output exactly as the API sent it, through every fault."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import orjson
import pytest

from harvester.errors import FatalApiError
from harvester.run.job import harvest
from harvester.sim.server import FAULT_KINDS, Simulator
from harvester.stats import RunStats
from harvester.store.batch import Batch
from harvester.store.journal import Journal

from .conftest import (
    FakeClock,
    assert_exactly_once,
    expected_events,
    make_settings,
    output_of,
    read_ndjson,
    until,
    write_calls,
)
from .hostile import Hostile, poison_id

EVENTS_PATH = re.compile(r"/v1/users/u-simulatoruserid0000000/calls/c-[A-Za-z0-9-]{1,64}/events")


async def test_every_event_of_every_call_once_with_call_id(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    data = output_of(settings).read_bytes()
    assert data.endswith(b"\n") and b"\n\n" not in data, "one event a line, each line whole"
    assert all(isinstance(orjson.loads(line), dict) for line in data.splitlines())
    assert_exactly_once(output_of(settings), ids)
    assert (stats.calls, stats.ok, stats.failed) == (len(ids), len(ids), 0)
    assert stats.events == len(expected_events(ids))
    assert stats.requests == len(ids) == len(sim.requests)
    assert settings.failures_path.read_bytes() == b""


async def test_a_calls_events_stay_together_in_the_output(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, concurrency=16)
    await harvest(settings, clock=clock)

    order = [e["callId"] for e in read_ndjson(output_of(settings))]
    runs = [call for i, call in enumerate(order) if i == 0 or order[i - 1] != call]
    assert sorted(runs) == sorted(ids)


async def test_a_slow_page_is_that_page_late(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.events_page_size = 3
    sim.config.faults = {"slow": 0.3}
    sim.config.slow_seconds = 0.05
    ids = sim.call_ids()[:20]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path)

    await harvest(settings, clock=clock)

    assert sim.statuses["slow"] > 0
    assert_exactly_once(output_of(settings), ids)


@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "slow"])
async def test_output_is_exact_under_each_fault(
    kind: str, sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.faults = {kind: 0.5}
    sim.config.max_faults_per_call = 3
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, max_attempts=4)

    stats = await harvest(settings, clock=clock)

    assert sim.statuses[kind] > 0, "the fault was injected"
    assert_exactly_once(output_of(settings), ids)
    assert (stats.ok, stats.failed) == (len(ids), 0)
    assert stats.requests == len(sim.requests)
    if kind == "reset":
        # aiohttp resends an idempotent request at once when a kept-alive connection drops;
        # that resend is a request (counted) but not one of our retries.
        assert 0 < stats.retries <= stats.requests - len(ids)
    else:
        assert stats.retries == stats.requests - len(ids)


async def test_a_slow_answer_times_out_and_is_retried(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.faults = {"slow": 0.5}
    sim.config.slow_seconds = 5
    ids = sim.call_ids()[:10]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, timeout=0.2, concurrency=10)

    stats = await harvest(settings, clock=clock)

    assert sim.statuses["slow"] > 0
    assert_exactly_once(output_of(settings), ids)
    assert stats.failed == 0


async def test_a_call_that_keeps_failing_lands_in_failures_with_its_attempts(
    clock: FakeClock, tmp_path: Path
) -> None:
    good, failing = "c-good0000000000000000001", [poison_id("always-503", n) for n in range(3)]
    write_calls(tmp_path, [good, *failing])
    async with Hostile() as api:
        settings = make_settings(api, tmp_path, max_attempts=3, concurrency=1)
        stats = await harvest(settings, clock=clock)

    failures = read_ndjson(settings.failures_path)
    assert sorted(f["callId"] for f in failures) == sorted(failing)
    assert {(f["status"], f["code"], f["attempts"]) for f in failures} == {(503, "unavailable", 3)}
    # Nine attempts, and the call harvested before asked again, which shows the API is up:
    # these calls fail on their own, so they are listed (were it down, they would be left for
    # the next run).
    assert (stats.ok, stats.failed, stats.requests) == (1, 3, 11)
    assert api.requests[good] == 2
    # Backoff grows between attempts: two waits per call, the second about twice the first.
    # (Waits under 0.1 s are the limiter's pacing, not backoff.)
    backoffs = [s for s in clock.sleeps if s >= 0.1]
    assert len(backoffs) == 6
    assert all(0.5 <= s < 1.0 for s in backoffs[::2]) and all(
        1.0 <= s < 1.5 for s in backoffs[1::2]
    )


async def test_unknown_calls_go_to_failures_once_without_retry(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = [*sim.call_ids()[:5], "c-doesnotexist0000000000"]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert read_ndjson(settings.failures_path) == [
        {
            "callId": "c-doesnotexist0000000000",
            "status": 404,
            "code": "call-not-found",
            "message": "The call 'c-doesnotexist0000000000' could not be found",
            "attempts": 1,
        }
    ]
    assert (stats.calls, stats.ok, stats.failed, stats.requests) == (6, 5, 1, 6)


HOSTILE = [
    "c-../../../v1/users/u-other/calls",
    "c-abc/../../x",
    "c-abc?page=2",
    "c-abc#frag",
    "c-abc%2F..",
    "c-abc def",
    "c-\u0430bc",  # Cyrillic a
    "c-" + "a" * 65,
    "../c-abc",
    "u-abc",
    "c-",
    "c-abc\x00",
    "c-ab.c",
]


async def test_hostile_ids_are_listed_as_invalid_and_never_sent(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    good = sim.call_ids()[:3]
    (tmp_path / "calls.txt").write_text("\n".join([*HOSTILE, *good]) + "\n")
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert all(EVENTS_PATH.fullmatch(path) for path in sim.requests), sim.requests
    assert len(sim.requests) == 3
    failures = read_ndjson(settings.failures_path)
    # "c-abc def" is one line with a space inside; the reader strips only the ends.
    # Listed as text: a byte that is no printable text (a NUL) escaped, as Python writes it.
    shown = sorted(h.strip().replace("\x00", "\\x00") for h in HOSTILE)
    assert sorted(f["callId"] for f in failures) == shown
    assert {f["code"] for f in failures} == {"invalid-call-id"}
    assert {f["attempts"] for f in failures} == {0}
    assert (stats.ok, stats.failed, stats.invalid) == (3, len(HOSTILE), len(HOSTILE))


async def test_duplicates_are_fetched_once(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()[:4]
    write_calls(tmp_path, [*ids, *ids, ids[0]])
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert_exactly_once(output_of(settings), ids)
    assert (stats.calls, stats.duplicates, stats.requests) == (4, 5, 4)


async def test_event_pages_are_followed_and_joined(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.events_page_size = 2
    ids = sim.call_ids()[:10]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert_exactly_once(output_of(settings), ids)
    pages = sum((len(expected_events([i])) + 1) // 2 for i in ids)
    assert stats.requests == pages == len(sim.requests)
    assert any("cursor=" in path for path in sim.requests)


@pytest.mark.parametrize("wrong", ["secret", "user"])
async def test_refused_credentials_abort_within_a_handful_of_requests(
    wrong: str, sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    if wrong == "secret":
        sim.config.secret = "another-secret"
    else:
        sim.config.user_id = "u-someoneelse00000000000"
    write_calls(tmp_path, sim.call_ids())
    settings = make_settings(sim, tmp_path, concurrency=4)

    with pytest.raises(FatalApiError) as caught:
        await harvest(settings, clock=clock)

    assert caught.value.status == (401 if wrong == "secret" else 403)
    assert len(sim.requests) <= 4
    assert all(s < 0.1 for s in clock.sleeps), "no retry backoff"


async def test_empty_input_is_a_successful_run_with_nothing_to_do(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    (tmp_path / "calls.txt").write_text("# nothing today\n\n")
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert stats.as_dict() == RunStats().as_dict()
    assert stats.completed
    assert output_of(settings).read_bytes() == b""
    assert sim.requests == []


async def test_a_next_link_to_another_host_is_not_followed(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    # Following it would hand our credentials to that host.
    sim.config.events_page_size = 2
    sim.config.next_link_origin = "http://127.0.0.2:9"
    ids = sim.call_ids()[:2]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert {f["code"] for f in read_ndjson(settings.failures_path)} == {"foreign-next-link"}
    assert (stats.failed, stats.requests) == (2, 2)
    assert output_of(settings).read_bytes() == b""


async def test_calls_that_are_answered_keep_the_run_going_through_many_failures(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    unknown = [f"c-unknown{i:04d}" for i in range(30)]
    write_calls(tmp_path, [*unknown, *ids])
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert (stats.ok, stats.failed) == (len(ids), 30)


async def test_calls_still_in_flight_when_the_grace_period_ends_are_abandoned_and_fetched_again(
    sim: Simulator, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, concurrency=4, grace=30)
    sim.config.latency = 20.0  # real seconds: far longer than this test may take
    caplog.set_level(logging.INFO, logger="harvester")
    stop = asyncio.Event()
    stats = RunStats()
    run = asyncio.create_task(harvest(settings, clock=clock, stop=stop, stats=stats))
    while len(sim.log) < 4:  # every worker waits for an answer
        await asyncio.sleep(0.01)

    started = time.monotonic()
    stop.set()
    await clock.sleep(31)  # the 30 s of grace pass on the test's clock, at once
    await run

    assert time.monotonic() - started < 5
    assert "grace period over: abandoning 4 calls in flight" in caplog.text
    assert (stats.ok, stats.failed, stats.as_dict()["unfinished"]) == (0, 0, 4)
    assert not stats.completed and read_ndjson(output_of(settings)) == []

    sim.config.latency = 0.0
    again = await harvest(settings, clock=clock)

    assert again.completed and again.ok == len(ids)
    assert_exactly_once(output_of(settings), ids)


async def test_the_call_list_is_taken_on_no_further_than_two_calls_a_worker_ahead(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    """Memory stays flat whatever the list's length: calls wait in a queue of two per worker
    (topped up once it is down to one per worker), not in a backlog."""
    ids = sim.call_ids()
    assert len(ids) > 20
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, concurrency=4)
    sim.config.latency = 20.0  # real seconds: every worker keeps waiting for its answer
    stop = asyncio.Event()
    stats = RunStats()
    run = asyncio.create_task(harvest(settings, clock=clock, stop=stop, stats=stats))
    await until(lambda: len(sim.log) == 4, "every worker waiting for an answer")
    await asyncio.sleep(0.1)  # the producer, were it unbounded, would run on meanwhile

    assert stats.calls <= 4 + 2 * 4, "the 4 calls on the wire, and at most 8 queued"
    stop.set()
    await clock.sleep(31)  # their grace passes on the test's clock
    await run
    sim.config.latency = 0.0
    again = await harvest(settings, clock=clock)

    assert again.completed
    assert_exactly_once(output_of(settings), ids)


async def test_calls_waiting_for_their_turn_are_dropped_at_once_when_the_run_stops(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    # One request every 5 s, and a long grace: only calls on the wire may use it.
    settings = make_settings(sim, tmp_path, concurrency=4, rate=0.2, grace=30)
    stop = asyncio.Event()
    stats = RunStats()
    run = asyncio.create_task(harvest(settings, stop=stop, stats=stats))  # the real clock
    # The first call is answered; the next ones wait for a turn, 5 s away.
    await until(lambda: stats.ok == 1, "the first call answered")

    started = time.monotonic()
    stop.set()
    await run

    assert time.monotonic() - started < 2, "no grace for calls that were not sent"
    assert len(sim.requests) == 1 == stats.ok and stats.failed == 0
    again = await harvest(make_settings(sim, tmp_path))
    assert again.completed
    assert_exactly_once(output_of(settings), ids)


async def test_calls_waiting_to_be_tried_again_are_dropped_at_once_when_the_run_stops(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = sim.call_ids()[:4]
    write_calls(tmp_path, ids)
    sim.config.faults, sim.config.max_faults_per_call = {"503": 1.0}, 100  # always, for now
    settings = make_settings(sim, tmp_path, concurrency=4, max_attempts=10, grace=30)
    stop = asyncio.Event()
    stats = RunStats()
    run = asyncio.create_task(harvest(settings, stop=stop, stats=stats))  # backoffs: real time
    while len(sim.log) < 4:
        await asyncio.sleep(0.01)

    started = time.monotonic()
    stop.set()
    await run

    assert time.monotonic() - started < 2, "no waiting out a backoff once stopping"
    assert (stats.ok, stats.failed) == (0, 0), "not failed: left for the next run"
    assert settings.failures_path.read_bytes() == b""


async def test_a_batch_that_never_fills_is_committed_by_the_interval_on_the_clock(
    sim: Simulator, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = sim.call_ids()[:30]
    write_calls(tmp_path, ids)
    # One request a second on the test's clock, one at a time, and a batch that never fills:
    # only the 5 s interval commits before the end, on the clock, in no real time. (On this
    # clock, time runs on while the disk commits, so how late a commit is says nothing.)
    settings = make_settings(
        sim, tmp_path, rate=1.0, concurrency=1, commit_calls=1000, commit_seconds=5.0
    )
    commits: list[tuple[float, int]] = []
    commit = Journal.commit

    def counted(journal: Journal, batch: Batch, totals: dict[str, int], elapsed: float) -> None:
        if len(batch):
            commits.append((clock.monotonic(), len(batch)))
        commit(journal, batch, totals, elapsed)

    monkeypatch.setattr(Journal, "commit", counted)
    began, real_began = clock.monotonic(), time.monotonic()

    stats = await harvest(settings, clock=clock)

    assert stats.ok == len(ids) and time.monotonic() - real_began < 5
    assert clock.monotonic() - began > 28, "thirty requests a second apart"
    assert len(commits) >= 2, "outcomes were committed before the end of the run"
    assert commits[0][0] - began >= 5, "not before the interval: the batch never fills"
    assert sum(calls for _, calls in commits) == len(ids)

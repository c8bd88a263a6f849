"""The simulator's limit shapes, schedules and fault spans, as the harvester meets them."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester.run.job import harvest
from harvester.sim.server import Simulator

from .conftest import (
    FakeClock,
    assert_exactly_once,
    make_settings,
    output_of,
    run_harvester,
    write_calls,
)


def admitted(sim: Simulator) -> list[float]:
    return [e.time for e in sim.log if e.status == 200]


async def test_a_sliding_window_never_admits_more_than_its_limit_in_any_window(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.rate_limit, sim.config.limit_kind = 5, "sliding"
    ids = sim.call_ids()[:40]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, concurrency=8)

    await harvest(settings, clock=clock)

    times = admitted(sim)
    assert max(sum(1 for t in times if start <= t < start + 1) for start in times) <= 5
    assert any(e.status == 429 for e in sim.log)
    assert_exactly_once(output_of(settings), ids)


async def test_a_token_bucket_allows_its_burst_then_its_rate(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.rate_limit, sim.config.limit_kind, sim.config.burst = 5, "bucket", 10
    ids = sim.call_ids()[:40]
    write_calls(tmp_path, ids)

    await harvest(make_settings(sim, tmp_path, concurrency=8), clock=clock)

    times = admitted(sim)
    assert len(times) == 40
    for end in times:
        assert sum(1 for t in times if t <= end) <= 10 + 5 * (end - times[0]) + 1e-9


async def test_a_limit_schedule_and_a_fault_span_play_out_in_time(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.rate_limit, sim.config.limit_schedule = 2, {3.0: 1000}
    sim.config.faults, sim.config.faults_until = {"503": 1.0}, 1.0
    sim.config.max_faults_per_call = 100
    ids = sim.call_ids()
    write_calls(tmp_path, ids)

    await harvest(make_settings(sim, tmp_path, concurrency=8), clock=clock)

    start = sim.log[0].time
    assert {e.status for e in sim.log if e.time - start < 1} >= {503}
    assert 503 not in {e.status for e in sim.log if e.time - start >= 1}
    times = admitted(sim)
    # At most 2 a second while the limit is 2/s (the 503s' backoff may carry every call past
    # it: none in the first 3 s is a pass, not a crash of max() on nothing).
    early = [t for t in times if t - start < 3]
    assert all(sum(1 for u in early if int(u) == int(t)) <= 2 for t in early)
    assert len(times) == len(ids), "after 3 s the limit is 1000: the rest in no time"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fault", "503=2"], b"the probability must be a number from 0 to 1"),
        (["--fault", "teapot=0.1"], b"unknown fault"),
        (["--calls", "-5"], b"'-5' is not a whole number"),
        (["--window", "0"], b"'0' must be more than 0"),
        (["--latency", "-1"], b"'-1' is not a number of seconds"),
        (["--rate-limit", "many"], b"'many' is not a whole number"),
    ],
)
def test_the_simulator_refuses_nonsense(flags: list[str], message: bytes) -> None:
    done = run_harvester({}, "sim", *flags, timeout=20)
    assert done.returncode == 2 and message in done.stderr, done.stderr

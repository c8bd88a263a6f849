"""429s: wait until the announced reset, pool-wide; a 429 is not a failed attempt."""

from __future__ import annotations

import email.utils
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

from harvester.client import MAX_RATE_LIMIT_WAIT, rate_limit_delay
from harvester.job import harvest
from harvester.sim import SimConfig, Simulator

from .conftest import (
    FakeClock,
    canonical,
    expected_events,
    make_settings,
    output_of,
    read_ndjson,
    write_calls,
)


async def test_the_pool_waits_for_the_reset_and_loses_nothing(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.rate_limit = 3
    ids = sim.call_ids()[:30]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, concurrency=4)
    started = clock.time()

    stats = await harvest(settings, clock=clock)

    assert canonical(read_ndjson(output_of(settings))) == canonical(expected_events(ids))
    assert stats.failed == 0
    assert stats.rate_limited == sum(1 for e in sim.log if e.status == 429) > 0
    # 30 calls at 3 per one-second window need ten windows: nine more after the first.
    assert clock.time() >= int(started) + 9
    # Once a 429 told the pool to wait for the window's end, nothing is sent before it.
    for index, exchange in enumerate(sim.log):
        if exchange.status == 429:
            reset = int(exchange.time) + 1
            later = [e for e in sim.log[index + 1 :] if e.time < reset]
            # Only requests already on the wire when the 429 arrived may land before the reset.
            assert len(later) < settings.concurrency


async def test_each_call_retries_only_after_the_announced_reset(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.rate_limit = 2
    ids = sim.call_ids()[:12]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, concurrency=3)

    await harvest(settings, clock=clock)

    by_call: dict[str, list[tuple[float, int | None]]] = defaultdict(list)
    for exchange in sim.log:
        by_call[exchange.path].append((exchange.time, exchange.status))
    checked = 0
    for exchanges in by_call.values():
        for (when, status), (next_when, _) in itertools.pairwise(exchanges):
            if status == 429:
                assert next_when >= int(when) + 1
                checked += 1
    assert checked > 0


@pytest.mark.parametrize(
    ("kind", "expected_wait"),
    [("429", 0.5), ("429-retry-after", 1.0)],
)
async def test_reset_and_retry_after_headers_set_the_wait(
    kind: str, expected_wait: float, sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    # The simulator's injected 429 announces a reset half a second ahead; Retry-After rounds
    # that up to whole seconds.
    sim.config.faults = {kind: 1.0}
    sim.config.max_faults_per_call = 1
    ids = sim.call_ids()[:1]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert stats.ok == 1 and stats.rate_limited == 1
    first, second = sim.log
    assert second.time - first.time == pytest.approx(expected_wait, abs=0.06)


async def test_a_429_without_headers_backs_off_exponentially(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.faults = {"429-bare": 1.0}
    sim.config.max_faults_per_call = 3
    write_calls(tmp_path, sim.call_ids()[:1])
    settings = make_settings(sim, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert (stats.ok, stats.rate_limited, stats.requests) == (1, 3, 4)
    waits = [b.time - a.time for a, b in zip(sim.log, sim.log[1:], strict=False)]
    assert [round(w * 2) / 2 for w in waits] == pytest.approx([0.5, 1.0, 2.0], abs=0.5)
    assert waits[0] < waits[1] < waits[2]


async def test_429s_do_not_use_up_max_attempts(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.faults = {"429": 1.0}
    sim.config.max_faults_per_call = 5
    ids = sim.call_ids()[:4]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, max_attempts=1)

    stats = await harvest(settings, clock=clock)

    assert (stats.ok, stats.failed, stats.rate_limited) == (4, 0, 20)
    assert canonical(read_ndjson(output_of(settings))) == canonical(expected_events(ids))


async def test_a_call_rate_limited_past_the_bound_is_given_up(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.faults = {"429": 1.0}
    sim.config.max_faults_per_call = 1000
    write_calls(tmp_path, sim.call_ids()[:2])
    settings = make_settings(sim, tmp_path, max_rate_limited=3)

    stats = await harvest(settings, clock=clock)

    failures = read_ndjson(settings.failures_path)
    assert {(f["status"], f["code"], f["attempts"]) for f in failures} == {
        (429, "rate-limit-reached", 3)
    }
    assert (stats.failed, stats.requests) == (2, 6)


NOW = 1_790_000_000.0


@pytest.mark.parametrize(
    ("headers", "delay"),
    [
        ({"X-RateLimit-Reset": str(int((NOW + 2.5) * 1000))}, 2.5),
        ({"X-RateLimit-Reset": str(int(NOW + 3))}, 3.0),  # epoch seconds, from a proxy
        ({"X-RateLimit-Reset": str(int((NOW - 10) * 1000))}, 0.0),  # the server's clock is behind
        ({"X-RateLimit-Reset": str(int((NOW + 86400) * 1000))}, MAX_RATE_LIMIT_WAIT),
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": email.utils.formatdate(NOW + 5, usegmt=True)}, 5.0),
        ({"X-RateLimit-Reset": "soon", "Retry-After": "4"}, 4.0),
        ({"X-RateLimit-Reset": "nan"}, None),
        ({"Retry-After": ""}, None),
        ({}, None),
    ],
)
def test_rate_limit_delay_reads_every_header_form(
    headers: dict[str, str], delay: float | None
) -> None:
    result = rate_limit_delay(headers, NOW)
    if delay is None:
        assert result is None
    else:
        assert result == pytest.approx(delay)


@pytest.mark.slow
async def test_a_429_pauses_every_worker_not_just_the_one_that_got_it(tmp_path: Path) -> None:
    # Real time: the point is what the other workers do while one waits. One call in ~20 is
    # answered 429 with a reset 0.25 s ahead; every other request would succeed at once.
    config = SimConfig(calls=60, faults={"429": 0.05}, max_faults_per_call=1, fault_reset=0.25)
    async with Simulator(config) as simulator:
        write_calls(tmp_path, simulator.call_ids())
        settings = make_settings(simulator, tmp_path, concurrency=4)

        stats = await harvest(settings)

    assert stats.ok == 60
    assert stats.rate_limited >= 1
    for index, exchange in enumerate(simulator.log):
        if exchange.status == 429:
            reset = exchange.time + config.fault_reset
            early = [e for e in simulator.log[index + 1 :] if e.time < reset - 0.01]
            # Only the requests already on the wire when the 429 came back.
            assert len(early) <= settings.concurrency - 1, early

"""429s: wait until the announced reset, pool-wide; a 429 is not a failed attempt."""

from __future__ import annotations

import asyncio
import email.utils
import io
import itertools
import logging
import re
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from harvester.fetch.reset import MAX_RATE_LIMIT_WAIT, rate_limit_delay
from harvester.fetch.retry import OWN_429S
from harvester.report.progress import Progress
from harvester.run.job import harvest
from harvester.sim.server import SimConfig, Simulator, call_id_for, events_for
from harvester.stats import RunStats

from .conftest import (
    At,
    FakeClock,
    assert_exactly_once,
    make_settings,
    output_of,
    read_ndjson,
    until,
    write_calls,
)
from .hostile import serving


async def test_the_pool_waits_for_the_reset_and_loses_nothing(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.rate_limit = 3
    ids = sim.call_ids()[:30]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, concurrency=4)
    started = clock.time()

    stats = await harvest(settings, clock=clock)

    assert_exactly_once(output_of(settings), ids)
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
    assert_exactly_once(output_of(settings), ids)


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
        # A reset already past, zero or nonsense is no reset: the call backs off, never
        # "send now" (a server clock behind ours, a Retry-After of 0).
        ({"X-RateLimit-Reset": str(int((NOW - 10) * 1000))}, None),
        ({"X-RateLimit-Reset": str(int(NOW - 2))}, None),
        ({"X-RateLimit-Reset": "0"}, None),
        ({"Retry-After": "0"}, None),
        ({"X-RateLimit-Reset": str(int((NOW - 2) * 1000)), "Retry-After": "3"}, 3.0),
        ({"X-RateLimit-Reset": "5"}, 5.0),  # small: seconds from now, as IETF's RateLimit-Reset
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


@pytest.mark.parametrize(
    ("reset", "sent", "delay"),
    [
        (NOW - 0.005, NOW - 0.03, -0.005),  # passed on the way back: the reset has come
        (NOW - 0.05, NOW - 0.03, -0.05),  # or a server clock a little behind ours: come too
        (NOW - 0.07, NOW - 0.03, None),  # long before the request left: a clock behind ours
        (NOW + 0.2, NOW - 0.03, 0.2),
    ],
)
def test_a_reset_that_passed_on_the_answers_way_back_has_come(
    reset: float, sent: float, delay: float | None
) -> None:
    headers = {"X-RateLimit-Reset": str(round(reset * 1000))}
    result = rate_limit_delay(headers, NOW, sent=sent)
    assert result == (None if delay is None else pytest.approx(delay, abs=0.001))
    assert rate_limit_delay({"X-RateLimit-Reset": "0"}, NOW, sent=sent) is None


async def test_a_buckets_next_token_past_on_arrival_is_still_the_limits_reset(
    clock: FakeClock, tmp_path: Path
) -> None:
    # Over a real network a token bucket's 429 arrives after its next token (10 ms ahead at
    # 100/s): its reset is past, but it passed after the request left. It is the limit's word,
    # not a 429 without a reset, which backs off and cuts the pace (0.6% to 1.2% of 429s before;
    # 0.2% to 0.4% now).
    config = SimConfig(calls=4000, rate_limit=100, limit_kind="bucket", burst=20)
    config.return_latency = 0.02
    async with Simulator(config, clock=clock) as api:
        write_calls(tmp_path, api.call_ids())
        stats = await harvest(make_settings(api, tmp_path, concurrency=16), clock=clock)

    assert (stats.ok, stats.failed) == (4000, 0)
    began = api.log[0].time
    steady = [e for e in api.log if 8 <= e.time - began < 32]  # 4000 calls take over 40 s
    refused = sum(e.status == 429 for e in steady) / len(steady)
    served = sum(e.status == 200 for e in steady) / 24
    assert refused <= 0.005 and served >= 95, (refused, served)


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


async def test_a_storm_of_429s_with_resets_already_past_ends_harvested_without_a_flood(
    clock: FakeClock, tmp_path: Path
) -> None:
    # Three seconds in which every answer is a 429 whose reset is already past (a server clock
    # behind ours) or a Retry-After of 0: each must cost a wait, never "send now".
    config = SimConfig(calls=100, faults={"429": 0.5, "429-retry-after": 0.5})
    config.fault_reset, config.faults_until, config.max_faults_per_call = -2.0, 3.0, 10**6
    async with Simulator(config, clock=clock) as api:
        ids = api.call_ids()
        write_calls(tmp_path, ids)
        stats = await harvest(make_settings(api, tmp_path), clock=clock)

    assert (stats.ok, stats.failed) == (100, 0)
    began = api.log[0].time
    storm = [e for e in api.log if e.time - began < 3.0]
    assert 0 < sum(e.status == 429 for e in storm) < 500, "hundreds of 429s, not thousands"
    assert api.log[-1].time - began < 60


@pytest.mark.slow
async def test_a_storm_of_429s_whose_reset_has_come_is_no_flood(tmp_path: Path) -> None:
    # Real time: for 1.5 s every answer is a 429 whose reset passed 1 ms before it left, 5 ms
    # before it arrives: a reset that has come, again and again, over windows that serve
    # nothing. Each must still cut the pace, and a call refused so twice backs off: hundreds
    # of 429s a second, and calls given up, otherwise.
    config = SimConfig(calls=2500, latency=0.002, faults={"429": 1.0}, max_faults_per_call=10**6)
    config.fault_reset, config.return_latency = -0.001, 0.005
    config.faults_from, config.faults_until = 0.5, 2.0
    async with Simulator(config) as api:
        write_calls(tmp_path, api.call_ids())
        stats = await harvest(make_settings(api, tmp_path, concurrency=8))

    assert (stats.ok, stats.failed) == (2500, 0)
    began = api.log[0].time
    storm = [e for e in api.log if 0.5 <= e.time - began < 2.0]
    assert 0 < sum(e.status == 429 for e in storm) < 60, "a few dozen 429s, not hundreds"


def refusing(hot: str, headers: dict[str, str], clock: FakeClock) -> web.Application:
    """An API that serves every call but ``hot``, which it answers 429 with ``headers`` at once;
    the others take 20 ms of ``clock``'s time, so that they are served while ``hot`` waits."""

    async def events(request: web.Request) -> web.Response:
        call_id = request.match_info["call"]
        if call_id == hot:
            body = {"code": "rate-limit-reached", "message": "slow down"}
            return web.json_response(body, status=429, headers=headers)
        await clock.sleep(0.02)
        return web.json_response(events_for(call_id))

    app = web.Application()
    app.router.add_get("/v1/users/{user}/calls/{call}/events", events)
    return app


@pytest.mark.parametrize(
    ("headers", "within"),
    [
        # No reset that parses: it backs off alone, and is given up within a minute or two
        # (rather than after max_rate_limited 429s, about 50 minutes).
        ({"Retry-After": "soon"}, 120.0),
        # One pool-wide pause (capped at 10 minutes), not a hundred of them (17 hours).
        ({"Retry-After": "86400"}, 600.0 + 60.0),
    ],
)
async def test_a_call_refused_again_and_again_while_others_are_served_fails_on_its_own(
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    within: float,
) -> None:
    hot = "c-hot0000000000000000001"
    good = [call_id_for(7, i) for i in range(200)]
    write_calls(tmp_path, [*good[:3], hot, *good[3:]])
    started = clock.monotonic()
    caplog.set_level(logging.INFO, "harvester")
    async with serving(refusing(hot, headers, clock)) as url:
        settings = make_settings(At(url), tmp_path, concurrency=4, commit_calls=50)
        stats = await harvest(settings, clock=clock)

    assert stats.completed and stats.ok == len(good)
    failures = read_ndjson(settings.failures_path)
    assert [(f["callId"], f["status"], f["code"]) for f in failures] == [
        (hot, 429, "call-rate-limited")
    ]
    assert failures[0]["attempts"] <= OWN_429S + 3, "a few before the judgement, then its own"
    assert clock.monotonic() - started <= within
    paused = [r for r in caplog.records if getattr(r, "event", None) == "paused"]
    if headers["Retry-After"] == "86400":
        (told,) = paused  # told once, with its end and its cause
        assert re.search(r"waits until \d\d:\d\d:\d\d UTC \(600 s", told.getMessage())
        assert hot in told.getMessage() and "Retry-After: 86400" in told.getMessage()
    else:
        assert paused == []


async def test_progress_says_until_when_the_api_asked_every_request_to_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = RunStats()
    stream = io.StringIO()
    progress = Progress(stats, stream, show=True, log_every=0.05, metrics_file=None)
    caplog.set_level(logging.INFO, "harvester")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "progress"]

    ticking = asyncio.create_task(progress.run())
    await until(logged, "a first progress line")
    stats.paused_until = time.time() + 600
    resumes = datetime.fromtimestamp(stats.paused_until, UTC).strftime("%H:%M:%S")
    await until(lambda: "paused" in logged()[-1], "a progress line that says it is paused")
    ticking.cancel()
    progress.draw()

    lines = logged()
    assert "paused" not in lines[0]
    assert f"paused until {resumes} UTC" in lines[-1]
    assert f"paused until {resumes} UTC" in stream.getvalue()

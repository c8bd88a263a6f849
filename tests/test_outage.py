"""The API down (an outage, a wrong base URL) is not the calls' fault: nothing is listed as
failed, the run stops with its own exit code, and the next run takes the calls on. Calls that
fail on their own, however many in a row, never stop a run for good."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from harvester.errors import ApiUnavailable, FatalApiError
from harvester.run.job import harvest, retry_failed
from harvester.sim.server import SimConfig, Simulator, events_for
from harvester.stats import RunStats
from harvester.store.status import job_status

from .conftest import (
    At,
    FakeClock,
    assert_exactly_once,
    make_settings,
    output_of,
    read_ndjson,
    run_harvester,
    write_calls,
)
from .hostile import Hostile, poison_id, serving


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def stop_after(sim: Simulator, requests: int) -> None:
    while len(sim.log) < requests:
        await asyncio.sleep(0.001)
    await sim.stop()


async def test_an_outage_mid_run_fails_no_call_and_the_next_run_takes_them_on(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    flags: dict[str, Any] = {"concurrency": 2, "max_attempts": 2, "commit_calls": 5}
    outage = asyncio.create_task(stop_after(sim, 20))

    with pytest.raises(ApiUnavailable, match="Nothing is lost") as caught:
        await harvest(make_settings(sim, tmp_path, **flags), clock=clock)

    await outage
    assert caught.value.code == "api-unavailable"
    settings = make_settings(sim, tmp_path, **flags)
    assert settings.failures_path.read_bytes() == b"", "an outage is not the calls' failure"
    done = {event["callId"] for event in read_ndjson(output_of(settings))}
    assert 10 <= len(done) < len(ids), "what was done before the outage is committed"

    async with Simulator(SimConfig(calls=50), clock=clock) as back:  # the API is back
        stats = await harvest(make_settings(back, tmp_path, **flags), clock=clock)

    assert_exactly_once(output_of(settings), ids)
    assert settings.failures_path.read_bytes() == b""
    assert (stats.job["ok"], stats.job["failed"]) == (len(ids), 0)
    assert stats.skipped == len(done)


async def test_a_wrong_base_url_fails_no_call(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()[:5]  # fewer than an outage's worth: found out at the end of the run
    write_calls(tmp_path, ids)
    wrong = make_settings(sim, tmp_path, max_attempts=2, base_url=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(ApiUnavailable):
        await harvest(wrong, clock=clock)

    assert wrong.failures_path.read_bytes() == b""
    stats = await harvest(make_settings(sim, tmp_path), clock=clock)
    assert (stats.job["ok"], stats.job["failed"]) == (5, 0)


async def test_calls_that_always_fail_never_stop_the_run_however_many_in_a_row(
    clock: FakeClock, tmp_path: Path
) -> None:
    good = [f"c-good{i:03d}" for i in range(10)]
    poison = [poison_id("always-503", n) for n in range(30)]
    write_calls(tmp_path, [*good[:3], *poison, *good[3:]])
    async with Hostile() as api:
        settings = make_settings(api, tmp_path, concurrency=2, max_attempts=2)
        stats = await harvest(settings, clock=clock)

        assert stats.completed and (stats.ok, stats.failed) == (10, 30)
        # The API was asked whether it is up, with a call that had worked: it is.
        assert max(api.requests[call] for call in good[:3]) == 2
    failures = read_ndjson(settings.failures_path)
    assert sorted(f["callId"] for f in failures) == sorted(poison)
    assert {f["code"] for f in failures} == {"unavailable"}
    assert_exactly_once(output_of(settings), good)


async def test_retry_failed_cut_short_by_an_outage_still_lists_each_call_once(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    sim.config.faults = {"503": 0.6}
    sim.config.max_faults_per_call = 100
    settings = make_settings(sim, tmp_path, max_attempts=1, concurrency=2, commit_calls=3)
    first = await harvest(settings, clock=clock)
    assert first.failed > 20
    sim.config.faults = {}

    for _ in range(3):  # each retry-failed meets the API going down under it
        outage = asyncio.create_task(stop_after(sim, len(sim.log) + 8))
        with pytest.raises(ApiUnavailable):
            await retry_failed(
                make_settings(sim, tmp_path, max_attempts=1, concurrency=2, commit_calls=3),
                clock=clock,
            )
        await outage
        await sim.start()  # a new port: the next attempt starts against a live API again
        sim.log.clear()
        failures = read_ndjson(settings.failures_path)
        ledger = await harvest(make_settings(sim, tmp_path), clock=clock)  # does nothing new
        assert len(failures) == len({f["callId"] for f in failures}) == ledger.job["failed"]

    stats = await retry_failed(make_settings(sim, tmp_path), clock=clock)

    assert read_ndjson(settings.failures_path) == []
    assert (stats.job["ok"], stats.job["failed"]) == (len(ids), 0)
    assert_exactly_once(output_of(settings), ids)


def test_the_command_exits_6_and_the_same_command_later_finishes(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids))
    summary = tmp_path / "summary.json"
    args = [
        *("run", "-i", str(tmp_path / "calls.txt")),
        *("-o", str(tmp_path / "out.ndjson"), "--summary", str(summary), "--no-progress"),
        *("--max-attempts", "1"),
    ]
    down = {**sim_process, "CATAPULT_BASE_URL": f"http://127.0.0.1:{free_port()}"}

    done = run_harvester(down, *args)

    assert done.returncode == 6, done.stderr
    assert b"Nothing is lost" in done.stderr
    report = orjson.loads(summary.read_bytes())
    assert (report["status"], report["failed"]) == ("api-unavailable", 0)
    assert (tmp_path / "out.failures.ndjson").read_bytes() == b""

    done = run_harvester(sim_process, *args)

    assert done.returncode == 0, done.stderr
    assert_exactly_once(tmp_path / "out.ndjson", ids)


async def test_a_base_url_with_a_wrong_path_fails_no_call(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)

    with pytest.raises(FatalApiError, match="wrong-base-url"):
        await harvest(make_settings(sim, tmp_path, base_url=sim.base_url + "/api"), clock=clock)

    settings = make_settings(sim, tmp_path)
    assert settings.failures_path.read_bytes() == b""
    stats = await harvest(settings, clock=clock)
    assert (stats.job["ok"], stats.job["failed"]) == (len(ids), 0)


async def test_unknown_calls_at_the_start_are_still_failures_of_their_own(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    unknown = [f"c-unknown{i:04d}" for i in range(45)]
    write_calls(tmp_path, [*unknown, *sim.call_ids()[:5]])
    settings = make_settings(sim, tmp_path, concurrency=2)

    stats = await harvest(settings, clock=clock)

    assert (stats.ok, stats.failed) == (5, 45)
    assert sum(1 for path in sim.requests if path.endswith("/calls?sortOrder=desc&size=1")) == 1


class StoppingWhileAsked:
    """An API whose first call works, whose others always fail (503), and that sets ``stop``
    (as a signal or a deadline would) when the call that worked is asked for again: the
    outage guard asking whether the API is down."""

    def __init__(self, good: str, stop: asyncio.Event) -> None:
        self.good, self.stop, self.asked = good, stop, 0

    def app(self) -> web.Application:
        async def events(request: web.Request) -> web.Response:
            call_id = request.match_info["call"]
            if call_id == self.good:
                self.asked += 1
                if self.asked == 1:
                    return web.json_response(events_for(call_id))
                self.stop.set()
            return web.json_response({"code": "unavailable"}, status=503)

        app = web.Application()
        app.router.add_get("/v1/users/{user}/calls/{call}/events", events)
        return app


@pytest.mark.parametrize("failing", [40, 3])  # enough to ask mid-run; or asked at the end
async def test_a_stop_while_the_api_is_asked_whether_it_is_down_is_a_stop(
    clock: FakeClock, tmp_path: Path, failing: int
) -> None:
    good = "c-good0000000000000000001"
    write_calls(tmp_path, [good, *(f"c-down{n:019d}" for n in range(failing))])
    stop = asyncio.Event()
    api = StoppingWhileAsked(good, stop)
    async with serving(api.app()) as url:
        settings = make_settings(At(url), tmp_path, concurrency=1, max_attempts=2)
        stats = await harvest(settings, clock=clock, stop=stop)  # no Stopping, no crash

    assert api.asked == 2 and stop.is_set()
    assert not stats.completed
    assert settings.failures_path.read_bytes() == b"", "held calls are left for the next run"
    assert job_status(output_of(settings))["last_run"]["status"] == "stopped"


async def test_an_api_that_never_answered_is_called_down_within_seconds(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, sim.call_ids())
    started = clock.monotonic()
    nobody = f"http://127.0.0.1:{free_port()}"
    stats = RunStats()

    with pytest.raises(ApiUnavailable, match="never answered") as caught:
        await harvest(make_settings(At(nobody), tmp_path), clock=clock, stats=stats)

    assert clock.monotonic() - started < 10, "seconds, not minutes"
    assert stats.requests < 40, "a few attempts per worker, not 140"
    assert "connection refused" in str(caught.value) and "worked before" not in str(caught.value)
    settings = make_settings(sim, tmp_path)
    assert settings.failures_path.read_bytes() == b""
    assert (await harvest(settings, clock=clock)).job["ok"] == len(sim.call_ids())


async def test_an_events_endpoint_that_never_worked_is_down_whatever_the_list_answers(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    sim.config.faults, sim.config.max_faults_per_call = {"503": 1.0}, 1000  # events only

    with pytest.raises(ApiUnavailable, match="has not worked for any call") as caught:
        await harvest(make_settings(sim, tmp_path, max_attempts=2), clock=clock)

    assert caught.value.code == "api-unavailable"
    settings = make_settings(sim, tmp_path)
    assert settings.failures_path.read_bytes() == b"", "an outage, not the calls' failures"
    assert job_status(output_of(settings))["completed"] is False
    sim.config.faults = {}
    stats = await harvest(settings, clock=clock)
    assert (stats.job["ok"], stats.job["failed"]) == (len(ids), 0)


def redirecting(good: set[str]) -> web.Application:
    """An API that answers 301 to another host for every request but the events of ``good``."""

    async def moved(request: web.Request) -> web.Response:
        call_id = request.match_info.get("call")
        if call_id in good:
            return web.json_response(events_for(call_id))
        elsewhere = f"https://api.example.com{request.rel_url}"
        return web.Response(status=301, headers={"Location": elsewhere})

    app = web.Application()
    app.router.add_get("/v1/users/{user}/calls/{call}/events", moved)
    app.router.add_get("/v1/users/{user}/calls", moved)
    return app


async def test_redirects_say_the_base_url_wants_another_host_or_scheme(
    clock: FakeClock, tmp_path: Path
) -> None:
    ids = [f"c-moved{n:018d}" for n in range(5)]
    write_calls(tmp_path, ids)
    async with serving(redirecting(set())) as url:
        settings = make_settings(At(url), tmp_path)
        with pytest.raises(FatalApiError, match="wrong-base-url") as caught:
            await harvest(settings, clock=clock)
    assert "301" in str(caught.value) and "another scheme or host" in str(caught.value)
    assert settings.failures_path.read_bytes() == b"", "not the calls' failure"

    # Where the rest works, a call redirected on its own fails, saying so.
    async with serving(redirecting(set(ids[1:]))) as url:
        stats = await harvest(make_settings(At(url), tmp_path), clock=clock)
    (failure,) = read_ndjson(settings.failures_path)
    assert (failure["callId"], failure["status"], failure["code"]) == (ids[0], 301, "redirected")
    assert "https://api.example.com/" in failure["message"] and stats.job["ok"] == 4

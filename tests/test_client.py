"""The API client on its own against the simulator: one call's events, and every answer that is
not one become the error that says what to do about it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from harvester.errors import ApiError, CallFailed, FatalApiError, RateLimited, TransientError
from harvester.fetch.client import CallEventsClient, ClientSettings
from harvester.fetch.limiter import RateLimiter
from harvester.run.job import harvest
from harvester.sim.server import Simulator, call_id_for, events_for
from harvester.stats import RunStats

from .conftest import Api, At, FakeClock, make_settings, read_ndjson, write_calls
from .hostile import serving


@dataclass
class Client:
    """A client on the simulator, its limiter and its counters."""

    client: CallEventsClient
    limiter: RateLimiter
    stats: RunStats


@contextlib.asynccontextmanager
async def client_of(
    sim: Api, clock: FakeClock, tmp_path: Path, **flags: Any
) -> AsyncIterator[Client]:
    settings = make_settings(sim, tmp_path, **flags)
    stats = RunStats()
    limiter = RateLimiter(settings.rate, clock)
    async with CallEventsClient(ClientSettings.of(settings), limiter, stats, clock) as client:
        yield Client(client, limiter, stats)


async def test_a_calls_pages_are_followed_and_joined(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.events_page_size = 3
    call_id = max(sim.call_ids(), key=lambda c: len(events_for(c)))
    pages = -(-len(events_for(call_id)) // 3)
    assert pages >= 3

    async with client_of(sim, clock, tmp_path) as api:
        events = await api.client.events(call_id)

    assert events == events_for(call_id)
    assert len(sim.log) == pages
    assert api.stats.requests == pages
    assert api.stats.statuses == {200: pages}


@pytest.mark.parametrize(
    ("fault", "kind", "status", "code"),
    [
        ("500", TransientError, 500, "internal-error"),
        ("502", TransientError, 502, "http-502"),
        ("503", TransientError, 503, "unavailable"),
        ("504", TransientError, 504, "gateway-timeout"),
        ("html", TransientError, 200, "invalid-body"),
        ("truncate", TransientError, None, "truncated-body"),
        ("reset", TransientError, None, "connection-error"),
    ],
)
async def test_a_failed_answer_becomes_a_transient_error(
    sim: Simulator,
    clock: FakeClock,
    tmp_path: Path,
    fault: str,
    kind: type[ApiError],
    status: int | None,
    code: str,
) -> None:
    sim.config.faults = {fault: 1.0}
    async with client_of(sim, clock, tmp_path) as api:
        with pytest.raises(ApiError) as raised:
            await api.client.events(sim.call_ids()[0])

    assert type(raised.value) is kind
    assert (raised.value.status, raised.value.code) == (status, code)
    assert api.stats.rate_limited == 0


async def test_a_slow_answer_is_a_timeout(sim: Simulator, clock: FakeClock, tmp_path: Path) -> None:
    sim.config.faults = {"slow": 1.0}
    sim.config.slow_seconds = 5
    async with client_of(sim, clock, tmp_path, timeout=0.2) as api:
        with pytest.raises(TransientError) as raised:
            await api.client.events(sim.call_ids()[0])

    assert (raised.value.status, raised.value.code) == (None, "timeout")


async def test_an_unknown_call_fails_that_call_and_bad_credentials_the_run(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    async with client_of(sim, clock, tmp_path) as api:
        with pytest.raises(CallFailed) as unknown:
            await api.client.events("c-doesnotexist0000000000")
    sim.config.secret = "another-secret"
    async with client_of(sim, clock, tmp_path) as api:
        with pytest.raises(FatalApiError) as refused:
            await api.client.events(sim.call_ids()[0])

    assert (unknown.value.status, unknown.value.code) == (404, "call-not-found")
    assert (refused.value.status, refused.value.code) == (401, "user-access-denied")


async def test_a_429_is_rate_limited_and_pauses_the_pool_until_its_reset(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.faults = {"429": 1.0}
    sim.config.fault_reset = 1.5
    async with client_of(sim, clock, tmp_path) as api:
        asked_at = clock.monotonic()
        with pytest.raises(RateLimited) as raised:
            await api.client.events(sim.call_ids()[0])
        retry_at = raised.value.retry_at
        assert retry_at is not None
        assert retry_at == pytest.approx(asked_at + 1.5, abs=0.01)
        assert (api.stats.rate_limited, api.stats.statuses) == (1, {429: 1})

        await api.limiter.acquire()  # the next request of any worker

        assert clock.monotonic() >= retry_at


async def test_a_429_without_a_reset_is_rate_limited_without_a_pause(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.faults = {"429-bare": 1.0}
    async with client_of(sim, clock, tmp_path) as api:
        with pytest.raises(RateLimited) as raised:
            await api.client.events(sim.call_ids()[0])
        assert raised.value.retry_at is None
        asked_at = clock.monotonic()

        await api.limiter.acquire()

        assert clock.monotonic() - asked_at < 0.1  # pacing at most, no pause
    assert api.stats.rate_limited == 1


async def test_what_is_not_the_api_is_never_asked(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    async with client_of(sim, clock, tmp_path) as api:
        with pytest.raises(ValueError, match="unsafe call id"):
            await api.client.events("c-../../calls")
        with pytest.raises(CallFailed) as foreign:
            await api.client.calls_page(URL("https://elsewhere.example/v1/users/u-x/calls"))

    assert foreign.value.code == "foreign-url"
    assert sim.log == []
    assert api.stats.requests == 0


async def test_the_call_list_is_read_page_by_page_as_linked(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    async with client_of(sim, clock, tmp_path) as api:
        first, next_url, _ = await api.client.calls_page(api.client.calls_url(20))
        assert next_url is not None
        second, _, _ = await api.client.calls_page(next_url)

    assert [r["id"] for r in first + second] == sim.call_ids()[:40]
    assert api.stats.requests == len(sim.log) == 2


async def test_a_body_cut_short_is_said_in_our_words_with_how_much_came(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    sim.config.faults = {"truncate": 1.0}
    async with client_of(sim, clock, tmp_path) as api:
        with pytest.raises(TransientError) as raised:
            await api.client.events(sim.call_ids()[0])

    said = str(raised.value)
    assert re.fullmatch(
        r"truncated-body: the answer ended after (\d+) of (\d+) bytes: the connection closed "
        r"before it was complete",
        said,
    ), said
    # Nothing of aiohttp's own text: its parser's "400" is no status the API sent.
    assert "400" not in said and "ContentLength" not in said and "payload" not in said


async def _cut_chunked(request: web.Request) -> web.StreamResponse:
    """A chunked 200 that stops before its last chunk."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b'[{"name": "create"},')
    assert request.transport is not None
    request.transport.close()
    return response


async def _bad_gzip(request: web.Request) -> web.StreamResponse:
    """A 200 that says it is gzip and is not."""
    return web.Response(
        body=b"\x1f\x8bnot gzip at all" * 20,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )


@pytest.mark.parametrize(
    ("answer", "status", "code", "message"),
    [
        (
            _cut_chunked,
            None,
            "truncated-body",
            "the answer ended before its last chunk: the connection closed before it was complete",
        ),
        (
            _bad_gzip,
            200,
            "invalid-body",
            "the answer's body cannot be decompressed (Content-Encoding: gzip)",
        ),
    ],
)
async def test_a_body_that_cannot_be_read_whole_is_said_in_our_words(
    clock: FakeClock,
    tmp_path: Path,
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
    status: int | None,
    code: str,
    message: str,
) -> None:
    app = web.Application()
    app.router.add_get("/v1/users/{user}/calls/{call}/events", answer)
    async with serving(app) as base_url, client_of(At(base_url), clock, tmp_path) as api:
        with pytest.raises(TransientError) as raised:
            await api.client.events(call_id_for(1, 0))

    assert (raised.value.status, raised.value.code, raised.value.message) == (
        status,
        code,
        message,
    )


async def test_a_call_whose_answers_keep_ending_early_is_listed_in_our_words(
    clock: FakeClock, tmp_path: Path
) -> None:
    good, cut = call_id_for(1, 0), call_id_for(2, 0)

    async def events(request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call"]
        body = orjson.dumps(events_for(call_id))
        if call_id == good:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:100])
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/v1/users/{user}/calls/{call}/events", events)
    write_calls(tmp_path, [good, cut])
    async with serving(app) as base_url:
        settings = make_settings(At(base_url), tmp_path, max_attempts=2, concurrency=1)
        await harvest(settings, clock=clock)

    [failure] = read_ndjson(settings.failures_path)
    size = len(orjson.dumps(events_for(cut)))
    assert (failure["callId"], failure["code"]) == (cut, "truncated-body")
    assert failure["message"] == (
        f"the answer ended after 100 of {size} bytes: the connection closed before it was complete"
    )

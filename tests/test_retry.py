"""One call under the retry policy: what is retried, how often, how long it waits, and how it
counts, against a server of our own that answers each call as scripted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from harvester.errors import CallFailed, RateLimited, TransientError
from harvester.fetch.client import CallEventsClient, ClientSettings
from harvester.fetch.limiter import RateLimiter
from harvester.fetch.retry import Retrier, RetrySettings
from harvester.sim.server import call_id_for, events_for
from harvester.stats import RunStats

from .conftest import FakeClock, make_settings, until
from .hostile import serving

CALL = call_id_for(3, 0)
RESET = 2.0  # seconds ahead that a scripted 429 announces its reset


class Scripted:
    """The events endpoint, answering the n-th request for a call with ``script[n]`` (the last
    one again past the end): "200" (the call's events), "500", "503", "404", "429" (its reset
    ``RESET`` seconds ahead on ``clock``) or "slow" (no answer until the client hangs up)."""

    def __init__(self, clock: FakeClock, script: list[str]) -> None:
        self.clock = clock
        self.script = script
        self.requests: Counter[str] = Counter()
        self.base_url = ""
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Scripted:
        app = web.Application()
        app.router.add_get("/v1/users/{user}/calls/{call}/events", self._events)
        self.base_url = await self._stack.enter_async_context(serving(app))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call"]
        answer = self.script[min(self.requests[call_id], len(self.script) - 1)]
        self.requests[call_id] += 1
        if answer == "slow":
            await asyncio.sleep(3600)
        if answer == "429":
            reset = str(round((self.clock.time() + RESET) * 1000))
            return _json(429, {"code": "rate-limit-reached"}, {"X-RateLimit-Reset": reset})
        if answer == "200":
            return _json(200, events_for(call_id))
        code = {"404": "call-not-found", "500": "internal-error", "503": "unavailable"}[answer]
        return _json(int(answer), {"code": code, "message": f"scripted {answer}"})


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), headers=headers, content_type="application/json"
    )


@dataclass
class Call:
    """A retrier, a client and its limiter on the scripted server, and what they counted."""

    api: Scripted
    retrier: Retrier
    client: CallEventsClient
    limiter: RateLimiter
    stats: RunStats
    clock: FakeClock

    async def events(self) -> list[dict[str, Any]]:
        return await self.retrier.run(self.client.events, CALL)

    def backoffs(self) -> list[float]:
        """The waits between attempts (the limiter's pacing waits far less)."""
        return [s for s in self.clock.sleeps if s >= 0.1]


@contextlib.asynccontextmanager
async def scripted_call(
    clock: FakeClock, tmp_path: Path, script: list[str], **flags: Any
) -> AsyncIterator[Call]:
    async with Scripted(clock, script) as api:
        settings = make_settings(api, tmp_path, **flags)
        stats = RunStats()
        limiter = RateLimiter(settings.rate, clock)
        async with CallEventsClient(ClientSettings.of(settings), limiter, stats, clock) as client:
            yield Call(
                api,
                Retrier(RetrySettings.of(settings), stats, clock),
                client,
                limiter,
                stats,
                clock,
            )


@pytest.fixture
def retry_log() -> Iterator[list[int]]:
    """The attempt numbers of the ``retry`` events logged (tenacity's numbers)."""
    attempts: list[int] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == "retry":
                attempts.append(record.fields["attempt"])  # type: ignore[attr-defined]

    log = logging.getLogger("harvester")
    handler, level = Collect(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield attempts
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


async def test_a_call_that_recovers_counts_every_attempt_as_tenacity_numbers_them(
    clock: FakeClock, tmp_path: Path, retry_log: list[int]
) -> None:
    async with scripted_call(clock, tmp_path, ["503", "500", "503", "200"]) as call:
        events = await call.events()

    assert events == events_for(CALL)
    assert call.api.requests[CALL] == 4
    assert call.stats.retries == 3
    assert retry_log == [1, 2, 3]
    # Backoff doubles from half a second, with up to half a second of jitter.
    assert [int(s * 2) for s in call.backoffs()] == [1, 2, 4]


async def test_the_retry_gives_up_after_max_attempts_with_the_last_failure(
    clock: FakeClock, tmp_path: Path, retry_log: list[int]
) -> None:
    async with scripted_call(clock, tmp_path, ["500", "503"], max_attempts=4) as call:
        with pytest.raises(TransientError) as raised:
            await call.events()

    error = raised.value
    assert (error.status, error.code, error.attempts) == (503, "unavailable", 4)
    assert call.api.requests[CALL] == 4
    assert retry_log == [1, 2, 3, 4]  # the tally's count, as tenacity numbered the attempts
    assert call.stats.retries == 3
    assert len(call.backoffs()) == 3  # none after the last attempt


async def test_a_permanent_failure_is_not_retried(
    clock: FakeClock, tmp_path: Path, retry_log: list[int]
) -> None:
    async with scripted_call(clock, tmp_path, ["404", "200"]) as call:
        with pytest.raises(CallFailed) as raised:
            await call.events()

    assert (raised.value.code, raised.value.attempts) == ("call-not-found", 1)
    assert call.api.requests[CALL] == 1
    assert (call.stats.retries, retry_log, call.backoffs()) == (0, [], [])


async def test_a_429_pauses_until_its_reset_and_is_not_a_failed_attempt(
    clock: FakeClock, tmp_path: Path, retry_log: list[int]
) -> None:
    script = ["429", "503", "429", "429", "503", "200"]
    started = clock.monotonic()
    async with scripted_call(clock, tmp_path, script, max_attempts=3) as call:
        events = await call.events()  # two failed attempts of three: 429s are not counted

        assert events == events_for(CALL)
        assert call.api.requests[CALL] == 6
        # Every attempt that is tried again is logged (--verbose), the 429s' too, numbered as
        # tenacity numbers them; only the two 503s count against max_attempts (3).
        assert retry_log == [1, 2, 3, 4, 5]
        assert call.stats.retries == 5
        assert call.stats.rate_limited == 3
        # Each 429 waited for its reset, and held the whole pool (the limiter) till then.
        assert clock.monotonic() - started >= 3 * RESET
        waited = clock.monotonic()
        await call.limiter.acquire()
        assert clock.monotonic() == waited  # the last reset has passed: no pause now


async def test_a_429_holds_every_request_of_the_pool_until_its_reset(
    clock: FakeClock, tmp_path: Path
) -> None:
    async with scripted_call(clock, tmp_path, ["429", "200"], max_rate_limited=1) as call:
        with pytest.raises(RateLimited) as raised:
            await call.events()
        assert raised.value.retry_at is not None
        assert raised.value.retry_at >= clock.monotonic() + RESET - 0.01

        await call.limiter.acquire()  # any other request of the pool

        assert clock.monotonic() >= raised.value.retry_at


async def test_429s_in_a_row_give_up_at_max_rate_limited_and_other_failures_break_the_row(
    clock: FakeClock, tmp_path: Path
) -> None:
    script = ["429", "429", "503", "429", "429", "200"]
    async with scripted_call(clock, tmp_path, script, max_rate_limited=3) as call:
        assert await call.events() == events_for(CALL)
    async with scripted_call(clock, tmp_path, ["429"], max_rate_limited=3) as call:
        with pytest.raises(RateLimited) as raised:
            await call.events()

    error = raised.value
    assert (error.status, error.code, error.attempts) == (429, "rate-limit-reached", 3)
    assert call.api.requests[CALL] == 3


@pytest.mark.parametrize("script", [["slow"], ["503", "slow"]], ids=["first", "second"])
async def test_a_cancelled_call_is_never_retried(
    clock: FakeClock, tmp_path: Path, script: list[str]
) -> None:
    async with scripted_call(clock, tmp_path, script) as call:
        task = asyncio.create_task(call.events())
        # Counted as it reaches the server, which then does not answer.
        await until(lambda: call.api.requests[CALL] >= len(script), "the last request sent")

        task.cancel()

        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)  # time for a retry to arrive, were one (wrongly) sent
        assert call.api.requests[CALL] == len(script)
        assert call.stats.retries == len(script) - 1

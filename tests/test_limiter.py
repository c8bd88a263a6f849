"""The rate limiter on a fake clock: pacing, pool-wide pauses, learning the API's limit."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from harvester.limiter import INITIAL_RATE, PAUSE_SPREAD, PROBE_SECONDS, SAFETY, RateLimiter

from .conftest import FakeClock


async def admit(limiter: RateLimiter, clock: FakeClock, workers: int, each: int) -> list[float]:
    times: list[float] = []

    async def worker() -> None:
        for _ in range(each):
            await limiter.acquire()
            times.append(clock.monotonic())

    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())
    return sorted(times)


class FixedWindowServer:
    """A server that admits ``limit`` requests per ``window`` seconds (windows aligned to the
    epoch, as Catapult's are) and answers the rest 429 with the window's end."""

    def __init__(self, clock: FakeClock, limit: int, window: float = 1.0) -> None:
        self.clock, self.limit, self.window = clock, limit, window
        self.log: list[tuple[float, bool]] = []  # (monotonic time, was it a 429)
        self._start = -1.0
        self._count = 0

    def answer(self) -> float | None:
        """None when served, else the reset (monotonic) the 429 announces."""
        now = self.clock.monotonic()
        start = math.floor(self.clock.time() / self.window) * self.window
        if start != self._start:
            self._start, self._count = start, 0
        if self._count < self.limit:
            self._count += 1
            self.log.append((now, False))
            return None
        self.log.append((now, True))
        return now + (start + self.window - self.clock.time())


async def drive(
    limiter: RateLimiter,
    server: FixedWindowServer,
    clock: FakeClock,
    *,
    workers: int,
    seconds: float,
    latency: float = 0.03,
) -> None:
    """Workers send requests through the limiter for ``seconds`` of fake time."""
    end = clock.monotonic() + seconds

    async def worker() -> None:
        while clock.monotonic() < end:
            sent = await limiter.acquire()
            await clock.sleep(latency / 2)
            reset = server.answer()
            await clock.sleep(latency / 2)
            if reset is None:
                limiter.answered(sent)
            else:
                limiter.rate_limited(reset)

    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())


def after(server: FixedWindowServer, start: float) -> tuple[float, float]:
    """(served per second, share of 429s) from ``start`` on."""
    late = [(t, limited) for t, limited in server.log if t >= start]
    span = late[-1][0] - late[0][0]
    served = sum(1 for _, limited in late if not limited)
    return served / span, sum(1 for _, limited in late if limited) / len(late)


async def test_a_configured_rate_is_paced_evenly_just_under_it(clock: FakeClock) -> None:
    limiter = RateLimiter(10.0, clock)
    times = await admit(limiter, clock, workers=8, each=5)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 40
    assert min(gaps) == pytest.approx(max(gaps), abs=1e-6)
    assert min(gaps) == pytest.approx(1 / (10 * SAFETY), abs=1e-6)


@pytest.mark.parametrize("limit", [20, 100, 500])
async def test_a_configured_rate_reaches_the_servers_limit_without_429s(
    clock: FakeClock, limit: int
) -> None:
    server = FixedWindowServer(clock, limit)
    limiter = RateLimiter(limit, clock)
    await drive(limiter, server, clock, workers=64, seconds=20)
    rate, limited = after(server, clock.monotonic() - 20)
    assert rate >= 0.95 * limit
    assert limited <= 0.005


@pytest.mark.parametrize("limit", [20, 100, 500])
async def test_with_no_rate_the_limit_is_learnt_and_then_kept_under(
    clock: FakeClock, limit: int
) -> None:
    server = FixedWindowServer(clock, limit)
    limiter = RateLimiter(0, clock)
    start = clock.monotonic()
    await drive(limiter, server, clock, workers=64, seconds=40)
    # Settled within the first few windows: from there on, the limit is used and respected.
    rate, limited = after(server, start + 10)
    assert rate >= 0.9 * limit
    assert limited <= 0.02
    assert 0.9 * limit <= limiter.rate <= 1.05 * limit


async def test_more_workers_do_not_mean_more_429s(clock: FakeClock) -> None:
    counts = []
    for workers in (8, 64):
        server = FixedWindowServer(clock, 100)
        await drive(RateLimiter(0, clock), server, clock, workers=workers, seconds=20)
        counts.append(sum(1 for _, limited in server.log if limited))
    assert counts[1] <= counts[0]


async def test_a_longer_window_is_learnt_from_the_reset(clock: FakeClock) -> None:
    server = FixedWindowServer(clock, 120, window=60.0)
    limiter = RateLimiter(0, clock)
    await drive(limiter, server, clock, workers=8, seconds=300)
    assert limiter.rate == pytest.approx(SAFETY * 120 / 60, rel=0.1)
    _, limited = after(server, clock.monotonic() - 180)
    assert limited <= 0.02


async def test_the_rate_creeps_up_when_the_limit_is_raised(clock: FakeClock) -> None:
    server = FixedWindowServer(clock, 50)
    limiter = RateLimiter(0, clock)
    await drive(limiter, server, clock, workers=16, seconds=10)
    server.limit = 80
    await drive(limiter, server, clock, workers=16, seconds=40 * PROBE_SECONDS)
    assert limiter.rate >= 0.9 * 80


async def test_without_429s_the_rate_grows_fast_from_its_start(clock: FakeClock) -> None:
    # Loopback: answers in half a millisecond; after a second the pace is no limit at all.
    limiter = RateLimiter(0, clock)
    assert limiter.rate == INITIAL_RATE
    start = clock.monotonic()
    while clock.monotonic() < start + 1:
        sent = await limiter.acquire()
        await clock.sleep(0.0005)
        limiter.answered(sent)
    assert limiter.rate >= 1000 * INITIAL_RATE


async def test_a_429_without_a_reset_halves_the_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(40, clock)
    limiter.rate_limited(None)
    assert limiter.rate == pytest.approx(20 * SAFETY)


async def test_a_pause_holds_every_worker_until_it_ends(clock: FakeClock) -> None:
    limiter = RateLimiter(0, clock)
    resume_at = clock.monotonic() + 2.0
    limiter.pause_until(resume_at)
    times = await admit(limiter, clock, workers=5, each=1)
    assert all(resume_at <= t <= resume_at + PAUSE_SPREAD + 5 / INITIAL_RATE for t in times)


async def test_a_pause_announced_during_a_wait_moves_the_turn(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, clock)
    await limiter.acquire()  # takes the first slot; the next is a second away
    start = clock.monotonic()

    async def pause_soon() -> None:
        await asyncio.sleep(0)
        limiter.pause_until(start + 5.0)

    async with asyncio.TaskGroup() as group:
        group.create_task(pause_soon())
        waiter = group.create_task(limiter.acquire())
    await waiter
    assert clock.monotonic() >= start + 5.0


async def test_a_shorter_pause_does_not_shorten_a_longer_one(clock: FakeClock) -> None:
    limiter = RateLimiter(0, clock)
    now = clock.monotonic()
    limiter.pause_until(now + 3)
    limiter.pause_until(now + 1)
    await limiter.acquire()
    assert clock.monotonic() >= now + 3

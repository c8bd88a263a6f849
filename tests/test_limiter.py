"""The rate limiter: smooth pacing, pool-wide pauses, on a fake clock."""

from __future__ import annotations

import asyncio
import itertools

from harvester.limiter import PAUSE_SPREAD, RateLimiter

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


async def test_requests_are_paced_evenly_not_in_bursts(clock: FakeClock) -> None:
    limiter = RateLimiter(10.0, clock)
    times = await admit(limiter, clock, workers=8, each=5)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 40
    assert min(gaps) >= 0.1 - 1e-6
    assert times[-1] - times[0] < 3.95


async def test_no_rate_means_no_waiting(clock: FakeClock) -> None:
    limiter = RateLimiter(0, clock)
    await admit(limiter, clock, workers=4, each=100)
    assert clock.sleeps == []


async def test_a_pause_holds_every_worker_until_it_ends(clock: FakeClock) -> None:
    limiter = RateLimiter(0, clock)
    resume_at = clock.monotonic() + 2.0
    limiter.pause_until(resume_at)
    times = await admit(limiter, clock, workers=5, each=1)
    assert all(resume_at <= t <= resume_at + PAUSE_SPREAD for t in times)


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

"""Rate limits as real APIs keep them, played in simulated time against the limiter.

A ``ModelApi`` answers each request at the moment it arrives: served, or 429 with the reset it
announces (or none). Its limit is a fixed window (Catapult's), a sliding window or a token
bucket, may change on a schedule, and stray 429s (a proxy's, a busy gateway's) may come on top,
independent of any limit. ``play`` runs clients, each a ``RateLimiter`` and its workers, against
one API for some seconds of fake time and reports what each got. Minutes of traffic take
milliseconds.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from dataclasses import dataclass, field

from harvester.fetch.limiter import RateLimiter
from harvester.fetch.retry import backoff

from .conftest import FakeClock


class FixedWindow:
    """``limit`` requests per ``window`` seconds, windows aligned to the epoch (Catapult)."""

    def __init__(self, limit: float, window: float = 1.0) -> None:
        self.limit, self.window = limit, window
        self._start, self._count = -1.0, 0

    def admit(self, now: float) -> float | None:
        """None when served, else the wall time at which requests are allowed again."""
        start = math.floor(now / self.window) * self.window
        if start != self._start:
            self._start, self._count = start, 0
        if self._count < self.limit:
            self._count += 1
            return None
        return start + self.window


class SlidingWindow:
    """At most ``limit`` requests in any ``window`` seconds."""

    def __init__(self, limit: float, window: float = 1.0) -> None:
        self.limit, self.window = limit, window
        self._times: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        times = self._times
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.limit:
            times.append(now)
            return None
        return times[0] + self.window


class TokenBucket:
    """A bucket of ``burst`` tokens refilled at ``limit`` per second; a request takes one."""

    def __init__(self, limit: float, burst: float) -> None:
        self.limit, self.burst = limit, burst
        self._tokens, self._at = burst, -1.0

    def admit(self, now: float) -> float | None:
        if self._at >= 0:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.limit)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return now + (1 - self._tokens) / self.limit


class Unlimited:
    """No limit at all."""

    limit = math.inf

    def admit(self, now: float) -> float | None:
        return None


Limit = FixedWindow | SlidingWindow | TokenBucket | Unlimited


@dataclass
class Stray:
    """429s with probability ``share`` per request between ``start`` and ``end`` (seconds from
    the start of play), announcing a reset ``reset`` seconds ahead (None: no header)."""

    share: float
    reset: float | None = 0.25
    start: float = 0.0
    end: float = math.inf


@dataclass
class ModelApi:
    """The API: a limit (changed at the times of ``schedule``), stray 429s, and a log."""

    limit: Limit
    stray: Stray | None = None
    schedule: dict[float, float] = field(default_factory=dict)  # seconds from start -> limit
    seed: int = 1
    resets: bool = True  # the limit's 429s announce their reset (else: no header that helps)
    log: list[tuple[float, int, bool]] = field(default_factory=list)  # (time, client, a 429?)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.began: float | None = None

    def answer(self, now: float, client: int) -> tuple[bool, float | None]:
        """(rate-limited?, the announced reset in wall time or None)."""
        if self.began is None:
            self.began = now
        elapsed = now - self.began
        for when in sorted(self.schedule):
            if elapsed >= when:
                self.limit.limit = self.schedule.pop(when)
        stray = self.stray
        in_span = stray is not None and stray.start <= elapsed < stray.end
        if stray is not None and in_span and self._rng.random() < stray.share:
            self.log.append((now, client, True))
            return True, None if stray.reset is None else now + stray.reset
        reset = self.limit.admit(now)
        self.log.append((now, client, reset is not None))
        return reset is not None, reset if self.resets else None

    def served(self, start: float, end: float, client: int | None = None) -> tuple[float, float]:
        """(requests served per second, share of requests answered 429) in [start, end) of
        play time, for one client or all."""
        assert self.began is not None
        chosen = [
            limited
            for when, who, limited in self.log
            if start <= when - self.began < end and (client is None or who == client)
        ]
        served = sum(1 for limited in chosen if not limited)
        return served / (end - start), (len(chosen) - served) / max(len(chosen), 1)


@dataclass
class Client:
    """One harvester: its limiter, its workers, and the calls it has to make (None: endless)."""

    limiter: RateLimiter
    workers: int = 8
    calls: int | None = None
    done: int = 0
    finished_at: float | None = None
    # Requests sent after a 429 came back and before the reset it announced.
    early: int = 0
    closed_until: float = -math.inf


async def play(
    api: ModelApi,
    clients: list[Client],
    clock: FakeClock,
    *,
    seconds: float,
    latency: float = 0.03,
    returning: float = 0.5,
) -> None:
    """Each client's workers send requests through its limiter for ``seconds`` of fake time
    (or until its calls are done), as harvester's do: a 429 waits for its reset, or backs off.
    ``returning``: the share of the round trip after the API judged a request (its answer's
    way back, and the work of a slow API after it counted the request)."""
    start = clock.monotonic()
    end = start + seconds

    async def worker(number: int, client: Client) -> None:
        limited_in_a_row = 0
        while clock.monotonic() < end and (client.calls is None or client.done < client.calls):
            sent = await client.limiter.acquire()
            if clock.monotonic() < client.closed_until:
                client.early += 1
            await clock.sleep(latency * (1 - returning))
            limited, reset = api.answer(clock.time(), number)
            await clock.sleep(latency * returning)
            if not limited:
                client.limiter.answered(sent)
                client.done += 1
                limited_in_a_row = 0
                if client.calls is not None and client.done >= client.calls:
                    client.finished_at = clock.monotonic() - start
                continue
            limited_in_a_row += 1
            retry_at = None if reset is None else clock.monotonic() + (reset - clock.time())
            if retry_at is not None:
                client.closed_until = max(client.closed_until, retry_at)
            client.limiter.rate_limited(retry_at)
            wait = backoff(limited_in_a_row) if retry_at is None else retry_at - clock.monotonic()
            await clock.sleep(max(wait, 0.0))

    async with asyncio.TaskGroup() as group:
        for number, client in enumerate(clients):
            for _ in range(client.workers):
                group.create_task(worker(number, client))

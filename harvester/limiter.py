"""Admission of requests: one ``RateLimiter`` shared by every worker and the call list.

Every request takes a turn (``acquire``) before it is sent, so the limiter, not the number of
workers, sets the pace:

- **Pacing.** Turns are spaced evenly at the current rate: never a burst.
- **Pool-wide pause.** A 429's reset time holds every turn until then (plus a little spread, so
  the pool does not hit the API in one burst at the reset instant).
- **Learning the limit.** With no ``--rate``, the rate starts at ``INITIAL_RATE``, rises at
  the first answer to what keeps ``ON_THE_WIRE`` requests on the wire, and doubles every
  ``RAMP_ROUND_TRIPS`` round trips while answers come back: a fast API is at full speed within
  moments, and a rate-limited one is approached without a flood (what is on the wire when the
  first 429 comes back is a few requests, whatever the concurrency). The first 429 ends that:
  the limit is read off the server's own window (the answers counted since the window that
  the 429's reset closes began) and the pace set just under it. After ``PROBE_SECONDS``
  without a 429 the rate creeps up a little, so a raised limit is found too; the next 429
  measures again. With ``--rate R`` the pace starts just under R and never goes above it;
  429s still lower it.

All of it runs on an injectable clock, and the numbers below are the policy.
"""

from __future__ import annotations

import math
import random
from collections import deque

from harvester.clock import Clock

# Pace this far under a known limit: room for the jitter between our clock and the server's.
SAFETY = 0.97
# With no --rate: where the rate starts, how fast it grows, and the most it grows to.
INITIAL_RATE = 100.0
RAMP_ROUND_TRIPS = 128
ON_THE_WIRE = 6
MAX_RATE = 1_000_000.0
# Seconds without a 429 before the rate creeps up (PROBE_STEP of it, at least one request per
# window), so that a raised limit is found; at the limit, that costs one 429 now and then.
PROBE_SECONDS = 10.0
PROBE_STEP = 0.03
# The server's window until its 429s say otherwise (Catapult documents 1 request per 1000 ms).
DEFAULT_WINDOW = 1.0
# Waiters released together by the end of a pause are spread over this many seconds.
PAUSE_SPREAD = 0.05
# A turn this close is given at once: sleeping for less costs more than it paces.
EARLY = 0.002
# Two 429s whose resets are this close close the same window.
SAME_RESET = 0.05
# Answers are counted in buckets of 1/BUCKETS of a window, kept for HORIZON windows: enough to
# measure the window a 429 closes, in constant memory.
BUCKETS = 100
HORIZON = 3
LONGEST_WINDOW = 300.0


class RateLimiter:
    """Pacing, pool-wide pauses and the learned rate, on an injectable clock."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self._clock = clock
        self._ceiling = rate * SAFETY if rate > 0 else MAX_RATE
        self._rate = self._ceiling if rate > 0 else INITIAL_RATE
        self._learning = rate <= 0  # the ramp-up before the first 429
        self._interval = 1.0 / self._rate
        self._plan = 0  # changes when a pause or a lower rate voids the turns given out
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._window = DEFAULT_WINDOW
        self._last_reset: float | None = None
        self._quiet_since = clock.monotonic()
        self._round_trip: float | None = None  # smoothed seconds from turn to answer
        self._grown_at = clock.monotonic()
        # [bucket start, answers] for answers other than 429, oldest first.
        self._answers: deque[list[float]] = deque()

    @property
    def rate(self) -> float:
        """Requests per second now allowed."""
        return self._rate

    async def acquire(self) -> float:
        """Wait for this request's turn; returns the time it was given (monotonic)."""
        clock = self._clock
        while True:
            now = clock.monotonic()
            resume = self._paused_until
            if resume > now:
                resume += random.uniform(0, PAUSE_SPREAD)
            slot = max(now, self._next_slot, resume)
            self._next_slot = slot + self._interval
            if slot <= now + EARLY:
                return now
            plan = self._plan
            await clock.sleep(slot - now)
            # A pause or a new rate announced while we slept: take a turn again under it.
            if plan == self._plan:
                return clock.monotonic()

    def answered(self, sent_at: float) -> None:
        """A request got an answer that was not a 429."""
        now = self._clock.monotonic()
        answers = self._answers
        if answers and now < answers[-1][0] + self._window / BUCKETS:
            answers[-1][1] += 1
        else:
            answers.append([now, 1])
            while answers[0][0] < now - HORIZON * self._window:
                answers.popleft()
        sample = max(now - sent_at, 1e-4)
        trip = self._round_trip = (
            sample if self._round_trip is None else 0.9 * self._round_trip + 0.1 * sample
        )
        if self._learning:
            doublings = (now - self._grown_at) / (RAMP_ROUND_TRIPS * trip)
            self._grown_at = now
            grown = self._rate * 2 ** min(doublings, 10.0)
            # At once to what keeps a few requests on the wire: fast on a fast network, and
            # on a slow one still no flood when the first 429 comes back.
            self._set_rate(max(grown, ON_THE_WIRE / trip))
        elif now - self._quiet_since >= PROBE_SECONDS:
            self._quiet_since = now
            self._set_rate(self._rate + max(PROBE_STEP * self._rate, 1.0 / self._window))

    def rate_limited(self, retry_at: float | None) -> None:
        """A 429: hold the pool until ``retry_at`` (monotonic; None if the API did not say) and
        learn the limit from the window it closes."""
        now = self._clock.monotonic()
        self._quiet_since = now
        first, self._learning = self._learning, False
        if retry_at is None:
            self._set_rate(self._rate / 2)
            return
        self.pause_until(retry_at)
        last = self._last_reset
        if last is not None and abs(retry_at - last) < SAME_RESET:
            return  # another answer to a request already on its way: nothing new
        window = known = self._window
        if retry_at - now > window:
            # The server's window is longer than we thought, and holds all since the last reset.
            window, opened = retry_at - now, last if last is not None else -math.inf
        elif last is not None and window < retry_at - last < 3 * window:
            # Two resets in a row further apart than a window (and no lull of whole windows).
            window, opened = retry_at - last, last
        else:
            opened = retry_at - window
        self._window = window = min(window, LONGEST_WINDOW)
        self._last_reset = retry_at
        # The server counted a request when it arrived, half a round trip before its answer;
        # whole buckets only: better to count a few answers short than to overshoot.
        arrived = opened + (self._round_trip or 0.0) / 2
        counted = [(start, count) for start, count in self._answers if start >= arrived]
        if not counted:
            return
        served = sum(count for _, count in counted)
        # Served in one window, however late in it we began; a window seen only in part (the
        # first, when it is longer than we thought) is measured from our first answer in it.
        span = window if math.isfinite(opened) else retry_at - counted[0][0]
        # At most halved by one 429 in a window of known length: a stray 429 (a proxy's) must
        # not wreck a learnt rate.
        floor = self._rate / 2 if window == known and not first else 0.0
        self._set_rate(max(SAFETY * served / max(span, window / BUCKETS), floor))

    def pause_until(self, when: float) -> None:
        """Admit nothing before ``when`` (monotonic clock seconds)."""
        if when > self._paused_until:
            self._paused_until = when
            self._void_turns()

    def _set_rate(self, rate: float) -> None:
        slower = rate < self._rate
        self._rate = min(max(rate, 0.01), self._ceiling)
        self._interval = 1.0 / self._rate
        if slower:
            self._void_turns()

    def _void_turns(self) -> None:
        """Turns already given out no longer hold; waiting requests take new ones."""
        self._plan += 1
        self._next_slot = 0.0

"""Admission of requests: one ``RateLimiter`` shared by every worker and the call list.

Every request takes a turn (``acquire``) before it is sent, so the limiter, not the number of
workers, sets the pace:

- **Pacing.** Turns are spaced evenly at the current rate: never a burst.
- **Pool-wide pause.** A 429's reset time holds every turn until then (plus a little spread, so
  the pool does not hit the API in one burst at the reset instant).
- **Learning the limit** (no ``--rate``; with ``--rate R`` the same law runs under a ceiling of
  R, from a limit of R taken as confirmed). A 429 is evidence, not truth:

  1. *Ramp.* With no evidence yet, the rate starts at ``INITIAL_RATE``, rises at the first
     answer to what keeps ``ON_THE_WIRE`` requests on the wire, and doubles every
     ``RAMP_ROUND_TRIPS`` round trips while answers come back (the fastest round trip seen:
     the network's, not our own requests' queueing, so the ramp is as fast at any concurrency).
  2. *Measure.* A 429 with a reset closes the server's window: the answers to the requests it
     counted, per second, are a *sample* of the limit (a request counted half a round trip
     before its answer, or longer while echoes come back after their resets: a slow API counts,
     then works; a reset further away than the window, or the same gap between resets twice,
     means a longer window). No sample comes from an answer already on its way when the window
     shut (the same reset again), nor from a window we waited in for more than ``PAUSED_SHARE``
     of it; a 429 without a usable reset (none, past, zero or unreadable) cuts the rate to what
     recent clean windows served (by half when that is no lower), at most once a round trip;
     once such 429s have come back for longer than a window (a limit that tells no reset, not a
     burst of strays), the ramp does not start again for ``BEST_HORIZON``.
  3. *Decide.* A sample about a confirmed limit (or above it) confirms it again; at its pace, a
     little lower when under it (at the limit or above: what is left of the probe, which a
     sliding window remembers for a window). Probing past it: a sample under what a window of
     ours was served since is a stray's (probe on) while 429s come no more often than strays'; a
     429 whose reset is the next request away (a token bucket's), met before we were served more
     above the limit than half a window of it (or twice what such a probe was served before: the
     bucket's savings), leaves the limit where it was, whatever the window served. The same
     sample at two paces ``PACES_APART``, or in ``IN_A_ROW`` windows in a row, is a limit (not
     in the first window: a bucket's burst fills it): confirmed there (``ratelaw._settled``),
     paced just under it (``probe.paced``). Anything else is weak: a stray 429 (a busy
     gateway's), a lower limit, another client on the limit. While 429s come no more often than
     strays would (``STRAY_PRIOR`` under a confirmed limit, or what a trial found), it only
     pauses. Otherwise the pace steps down on *trial*: under the sample, at most by half (by
     ``STEP_DOWN`` under a confirmed limit, and not under one we are probing past).
  4. *Trial.* If at the lower pace 429s do not get rarer (``STRAY_RATIO`` of their share, and
     few: ``STRAY_MAX``), they are not ours: the pace goes back (no higher than what was served
     clean) and their share is remembered (fading over ``STRAY_MEMORY``). Strays' samples move
     with our pace; a limit's do not: the next 429 at the lower pace tells which.
  5. *Shut window.* A second 429 with the very same reset means the window shut for every
     request in flight, as a limit shuts it and a stray never does: if the first was let pass,
     the pace steps down now.
  6. *Climb.* Each window of our own clock (a *bin*) with no 429 of ours: below what the API
     served clean in the last ``BEST_HORIZON`` seconds, the rate goes straight back to it; on
     weak evidence, it grows by ``CLIMB``, a little more and a little less in turn, so that
     overshoots come at two paces; at a confirmed limit it waits ``PROBE_AFTER`` seconds (twice
     as long after each probe that found the limit where it was, up to ``PROBE_AFTER_MAX``),
     then probes up by ``PROBE_STEP``, the step doubling each clean window: a level held clean
     ``AGREE`` above the limit, and served there more than savings would give, means it was
     raised, and the climb finds it.

So strays cost their pauses, a lower limit is followed within a few windows, a raised one is
found by the next probe (at most 40 s apart), and two harvesters on one limit each measure their
own share of it. All of it runs on an injectable clock. Here: pacing, pauses, the ramp and the
measurements (steps 1 and 2); the law of steps 3 to 6, and its numbers, in
``harvester.fetch.ratelaw``.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque

from harvester.clock import Clock, sleep_unless
from harvester.errors import Stopping
from harvester.fetch.probe import SAFETY
from harvester.fetch.ratelaw import RateLaw
from harvester.fetch.reset import PAUSE_TOLD, PauseTeller
from harvester.fetch.streaks import OwnRefusals

# With no evidence: where the rate starts, how fast it grows, and the most it grows to.
INITIAL_RATE = 100.0
RAMP_ROUND_TRIPS = 128
ON_THE_WIRE = 6
MAX_RATE = 1_000_000.0
# The server's window until its 429s say otherwise (Catapult documents 1 request per 1000 ms).
DEFAULT_WINDOW = 1.0
# Waiters released together by the end of a pause are spread over this many seconds.
PAUSE_SPREAD = 0.05
# A turn this close is given at once: sleeping for less costs more than it paces. Turns given
# out are dealt again when the rate grows by more than this factor.
EARLY = 0.002
REDEAL = 1.2
_TO_REDEAL = math.log2(REDEAL)  # of a doubling
# A turn at most this far is waited for without waking on a stop: a stop is seen when it ends.
QUICK_WAIT = 0.05
# Two 429s whose resets are this close close the same window; two gaps between resets this
# close (a share of them) are the same.
SAME_RESET = 0.05
SAME_GAP = 0.02
# Two 429s announcing a reset this close (X-RateLimit-Reset is in ms) announce one: shut.
SHUT_RESET = 0.002
# Answers are counted in buckets of 1/BUCKETS of a window, kept for HORIZON windows: enough to
# measure the window a 429 closes, in constant memory.
BUCKETS = 100
HORIZON = 3
LONGEST_WINDOW = 300.0
# A window in which we waited more than this share of the time gives no sample.
PAUSED_SHARE = 0.15
# A reset this far away is learnt from only once a second call meets one (one call's may be its
# own), and the call refused again right after its pause is refused on its own. Pauses longer
# than PAUSE_TOLD seconds are logged.
LONG_PAUSE = 30.0


class RateLimiter:
    """Pacing, pool-wide pauses and the learned rate, on an injectable clock."""

    def __init__(self, rate: float, clock: Clock, stop: asyncio.Event | None = None) -> None:
        self._clock = clock
        self._stop = stop  # once set, no turn is given: requests not yet sent are not sent
        self._started = now = clock.monotonic()
        self._ceiling = rate * SAFETY if rate > 0 else MAX_RATE
        self._rate = self._ceiling if rate > 0 else INITIAL_RATE
        self._interval = 1.0 / self._rate
        self._dealt = self._rate  # the pace the turns given out were dealt at
        self._plan = 0  # changes when a pause or a lower rate voids the turns given out
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._window = DEFAULT_WINDOW
        self._last_reset: float | None = None
        self._longer = False  # the last 429's reset showed a window longer than we knew
        self._gaps: deque[float] = deque(maxlen=2)  # between the last resets
        self._backs: deque[float] = deque(maxlen=16)  # the last echoes' times after their reset
        self._pauses: deque[tuple[float, float]] = deque()  # (start, end) of earlier pauses
        self._round_trip: float | None = None  # smoothed seconds from turn to answer
        self._fastest = math.inf  # the shortest of them
        # [bucket start, answers] for answers other than 429, oldest first.
        self._answers: deque[list[float]] = deque()
        self._grown_at = now
        self._law = RateLaw(self, rate, now)  # what a 429 does to the pace
        self._own = OwnRefusals()  # calls refused on their own, not by the limit
        self._long_from: str | None = None  # the call whose far reset taught nothing yet
        self._teller = PauseTeller(clock)

    @property
    def rate(self) -> float:
        """Requests per second now allowed."""
        return self._rate

    @property
    def ceiling(self) -> float:
        """The most the pace may reach: under ``--rate``, or ``MAX_RATE``."""
        return self._ceiling

    @property
    def window(self) -> float:
        """The server's window as measured (seconds)."""
        return self._window

    @property
    def longer(self) -> bool:
        """The last 429's reset showed a window longer than we knew."""
        return self._longer

    async def acquire(self) -> float:
        """Wait for this request's turn; returns the time it was given (monotonic). Raises
        ``Stopping`` once the run is stopping: at once, however long the turn would be, or
        within ``QUICK_WAIT`` (a turn that near, or the ramp's steps before its first answer)."""
        clock = self._clock
        stop = self._stop
        while True:
            if stop is not None and stop.is_set():  # inline: every request passes here
                raise Stopping("the run is stopping: not sent")
            now = clock.monotonic()
            slot = self._next_slot
            if slot < now:
                slot = now
            resume = self._paused_until
            if resume > now:
                resume += random.uniform(0, PAUSE_SPREAD)
                if resume > slot:
                    slot = resume
            self._next_slot = slot + self._interval
            if slot <= now + EARLY:
                return now
            plan = self._plan
            await self._wait_for(slot, now, plan)
            # A pause or a new rate announced while we slept: take a turn again under it.
            if plan == self._plan:
                return clock.monotonic()

    async def _wait_for(self, slot: float, now: float, plan: int) -> None:
        """Sleep until ``slot``, or until the turns given out under ``plan`` are dealt again
        (seen within ``QUICK_WAIT`` while the rate ramps up: a turn given at the ramp's first
        pace would otherwise be waited for long after the pace has grown)."""
        clock = self._clock
        law = self._law
        # Looked at again as often as the ramp can re-deal turns: until the first answer (which
        # sets the ramp's pace), every QUICK_WAIT; then as long as the pace takes to grow by
        # REDEAL, which on a slow network or a slow machine is seconds.
        fastest = self._fastest
        step = QUICK_WAIT if fastest == math.inf else RAMP_ROUND_TRIPS * fastest * _TO_REDEAL
        step = max(step, QUICK_WAIT)
        while (wait := slot - now) > step and law.ramping:
            await self._sleep(step)
            if plan != self._plan:
                return
            now = clock.monotonic()
        await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``; raise ``Stopping`` once the run is stopping: at once, or for a
        sleep at most ``QUICK_WAIT`` long, when it ends (slept out plainly: waking on a stop as
        well costs two tasks and a wait, paid by every paced request when many are in flight)."""
        stop = self._stop
        if seconds <= QUICK_WAIT:
            await self._clock.sleep(seconds)
            if stop is not None and stop.is_set():
                raise Stopping("the run is stopping: not sent")
        elif not await sleep_unless(self._clock, seconds, stop):
            raise Stopping("the run is stopping: not sent")

    def answered(self, sent_at: float) -> None:
        """A request got an answer that was not a 429."""
        # Every answer comes here: plain arithmetic on locals, and no call but the law's and
        # to change the rate.
        now = self._clock.monotonic()
        window = self._window
        answers = self._answers
        if answers and now < (bucket := answers[-1])[0] + window / BUCKETS:
            bucket[1] += 1
        else:
            answers.append([now, 1])
            while answers[0][0] < now - HORIZON * window:
                answers.popleft()
        sample = now - sent_at
        if sample < 1e-4:
            sample = 1e-4
        trip = self._round_trip
        self._round_trip = sample if trip is None else 0.9 * trip + 0.1 * sample
        if sample < self._fastest:
            self._fastest = sample
        # The ramp's round trip is the fastest seen: the network's, not the time our own
        # requests queue behind each other, which grows with the calls in flight. The rate
        # grows once a round trip, as much as each answer of it would have.
        if self._law.answered(now, window) and now - self._grown_at >= self._fastest:
            fastest = self._fastest
            doublings = (now - self._grown_at) / (RAMP_ROUND_TRIPS * fastest)
            self._grown_at = now
            rate = self._rate
            if rate < self._ceiling:  # at the ceiling, growing changes nothing
                grown = rate * 2 ** min(doublings, 10.0)
                # At once to what keeps a few requests on the wire: fast on a fast network,
                # and on a slow one still no flood when the first 429 comes back.
                floor = ON_THE_WIRE / fastest
                self.set_rate(grown if grown > floor else floor)

    @property
    def paused_until(self) -> float:
        """Until when (monotonic clock seconds) the pool is paused; in the past when it is not."""
        return self._paused_until

    def rate_limited(
        self, retry_at: float | None, target: str | None = None, cause: str = "a 429"
    ) -> bool:
        """A 429 for ``target`` (a call id; None for a page of the call list): hold the pool
        until ``retry_at`` (monotonic; None if the API did not say) and learn from it what it
        says of the limit. ``cause`` says what asked for the pause, for the log.

        Returns True when the 429 is the target's own, not the account's (see
        ``harvester.fetch.streaks``): then nothing is learnt from it, and the pool waits for a
        near reset only (up to ``PAUSE_TOLD`` seconds: when in doubt, every request waits); the
        target waits alone."""
        now = self._clock.monotonic()
        law = self._law
        if target is not None and self._own.own(target, law.requests, law.limited):
            if retry_at is not None and retry_at - now <= PAUSE_TOLD:
                self._pause(retry_at, now, cause)
            return True
        law.refused(now)
        long = retry_at is not None and retry_at - now >= LONG_PAUSE
        if target is not None:
            self._own.counted(target, long, law.requests, law.limited)
            if long and self._long_from in (None, target):
                # A far reset may be one call's own: wait for it, but learn nothing of the limit
                # from it until another call meets one too.
                assert retry_at is not None
                self._long_from = target
                self._pause(retry_at, now, cause)
                return False
            if long:  # a second call's far reset: the limit's, learnt from below
                self._long_from = None
        last = self._last_reset
        echo = retry_at is not None and last is not None and abs(retry_at - last) < SAME_RESET
        if echo and retry_at is not None:  # a limit's (a stray's comes alone): came back
            self._backs.append(now - retry_at)  # this long after its reset at least
        sample = None if echo or retry_at is None else self._measure(retry_at, now)
        if retry_at is None or (sample is None and not echo and retry_at <= now):
            # No reset; or one that has come, over a window that served nothing: no word.
            law.no_reset(now, self._round_trip or 0.0)
            return False
        self._pause(retry_at, now, cause)
        if echo:
            # Another answer to a request already on its way; the very same reset is news.
            if last is not None and abs(retry_at - last) <= SHUT_RESET:
                law.same_reset(now)
            return False
        # A sample of None: a window we waited in says nothing of the limit.
        law.new_reset(sample, now, retry_at - now)
        return False

    def pause_until(self, when: float, cause: str = "") -> None:
        """Admit nothing before ``when`` (monotonic clock seconds); a pause of more than
        ``PAUSE_TOLD`` seconds is logged with its end and its ``cause``."""
        if when > self._paused_until:
            self._paused_until = when
            self._void_turns()
            self._teller.tell(when, cause)

    def _pause(self, until: float, now: float, cause: str) -> None:
        """``pause_until``, the pause kept for ``_measure``: a window we waited in says
        nothing of the limit."""
        if until > self._paused_until:
            self._pauses.append((now, until))
        self.pause_until(until, cause)

    def forget(self, target: str) -> None:
        """``target``'s call has ended (harvested, or given up): its 429s are over."""
        self._own.forget(target)

    # -- evidence ----------------------------------------------------------------------------

    def _measure(self, retry_at: float, now: float) -> float | None:
        """The served rate of the server window that the reset at ``retry_at`` closes."""
        last = self._last_reset
        window = self._window
        gap = retry_at - last if last is not None else 0.0
        self._longer = retry_at - now > window
        if self._longer:
            # The server's window is longer than we thought, and holds all since the last reset.
            window, opened = retry_at - now, last if last is not None else -math.inf
        elif (
            window < gap < 3 * window
            and all(abs(gap - other) <= SAME_GAP * gap for other in self._gaps)
            and len(self._gaps) == self._gaps.maxlen
            and abs(gap / window - round(gap / window)) > SAME_GAP
        ):
            # Resets the same time apart, three times running, further than a window but not a
            # whole number of windows (429s every other window would be): a longer window.
            # (Only so: the time between two strays' 429s may be anything.)
            window, opened = gap, retry_at - gap
        else:
            opened = retry_at - window
        self._gaps.append(gap)
        self._window = window = min(window, LONGEST_WINDOW)
        self._last_reset = retry_at
        # The server counted a request half a round trip before its answer, or as long before
        # it as the last 429s came back after their reset, most of them (a slow API counts,
        # then works; a stray's reset says nothing), give or take our clock's slop. Whole
        # buckets only: better short than overshooting.
        trip, backs = self._round_trip or 0.0, sorted(self._backs)
        back = min(max(trip / 2, backs[len(backs) // 2] if backs else 0.0), trip)
        arrived = opened + back - min(self._interval / 4, 2 * EARLY)
        pauses = self._pauses
        while pauses and pauses[0][1] < now - HORIZON * LONGEST_WINDOW:
            pauses.popleft()
        paused = sum(max(0.0, min(end, now) - max(start, arrived)) for start, end in pauses)
        if paused > PAUSED_SHARE * (now - arrived):
            return None  # we waited in this window: what it served says nothing of the limit
        counted = [(start, count) for start, count in self._answers if start >= arrived]
        if not counted:
            return None
        served = sum(count for _, count in counted)
        # Served in one window, however late in it we began; a window seen only in part (the
        # first, when it is longer than we thought) is measured from our first answer in it.
        span = window if math.isfinite(opened) else retry_at - counted[0][0]
        return served / max(span, window / BUCKETS)

    def served_lately(self, now: float) -> float:
        """Answers other than 429 per second over the last window (or since the start, when
        that is sooner)."""
        span = min(self._window, now - self._started)
        if span <= 0:
            return 0.0
        since = now - span
        return sum(count for start, count in self._answers if start >= since) / span

    def set_rate(self, rate: float) -> None:
        """Pace at ``rate`` (within 0.01 and the ceiling): the law's one lever."""
        before = self._rate
        self._rate = rate = min(max(rate, 0.01), self._ceiling)
        self._interval = 1.0 / rate
        # Slower: turns given out were too early. Much faster than when they were dealt: they
        # were too late, and what the new pace does would not show for a while (the climb
        # would outrun the pace; the ramp grows a little every round trip).
        if rate < before or rate > REDEAL * self._dealt:
            self._void_turns()

    def _void_turns(self) -> None:
        """Turns already given out no longer hold; waiting requests take new ones."""
        self._plan += 1
        self._next_slot = 0.0
        self._dealt = self._rate

"""The law that sets a ``RateLimiter``'s pace from what the API's 429s say (steps 3 to 6 of
``harvester.fetch.limiter``'s docstring): which 429s are a limit, which are strays, when to step
down on trial, when to climb back and how fast. ``RateLimiter`` measures; this decides.

The numbers below are the policy. ``tests/test_limiter.py`` plays the scenarios in simulated
time (``tests/ratemodel.py``), ``bench/ratelimit.py`` against the simulator in real time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

from harvester.fetch.probe import COUNT_SLACK, SAFETY, Probe, paced

# Two samples of the limit agree when within this share of each other; samples this close
# under a confirmed limit are noise, not a lower limit.
AGREE = 0.05
LOWER_AGREE = 0.03
# Two samples say the same limit only when measured at paces this far apart.
PACES_APART = 0.15
# On weak evidence, the rate grows by this factor each clean window; a 429 far under a
# confirmed limit first steps the pace down by this factor, to see.
CLIMB = 1.5
CLIMB_SPREAD = 0.1
STEP_DOWN = 0.8
# "Recently served without complaint": clean windows of the last this many seconds.
BEST_HORIZON = 20.0
# A trial judges after this many requests at the lower pace, and succeeds after
# max(TRIAL_REQUESTS, TRIAL_429S / share before) without its 429s staying as common as before.
TRIAL_MIN = 30
TRIAL_REQUESTS = 50
TRIAL_429S = 1.5
STRAY_RATIO = 0.5
# Strays are occasional: a share of 429s above this is ours, however it came about.
STRAY_MAX = 0.1
# The stray share fades by e every this many seconds; 429s count as strays while the last
# SHARE_OF requests (of the last SHARE_SECONDS) hold no more of them than strays would, give
# or take chance.
STRAY_MEMORY = 10.0
SHARE_OF = 200
SHARE_SECONDS = 10.0
# Under a confirmed limit, 429s far under it are taken for strays at this share at least.
STRAY_PRIOR = 0.005
# Samples older than this many windows say nothing about the next one; this many in as many
# windows in a row that agree show a limit even at one pace.
RECENT_WINDOWS = 5
IN_A_ROW = 3


@dataclass(frozen=True, slots=True)
class _Sample:
    """The served rate of a window a 429 closed, and our pace when it came."""

    time: float
    value: float
    pace: float


@dataclass(slots=True)
class _Trial:
    """A decrease on probation (see the module docstring, step 4)."""

    pace_before: float
    requests: int  # requests answered, 429s included, when it began
    limited: int  # 429s among them
    share_before: float  # share of 429s among the last SHARE_OF requests before it
    sample: float | None  # the sample that caused it
    length: int  # requests after which it has succeeded


class Gauge(Protocol):
    """What the law reads of the limiter it is composed into, and the one thing it changes:
    the pace."""

    @property
    def rate(self) -> float: ...
    @property
    def ceiling(self) -> float: ...
    @property
    def window(self) -> float: ...
    @property
    def longer(self) -> bool: ...
    def served_lately(self, now: float) -> float: ...
    def set_rate(self, rate: float) -> None: ...


class RateLaw:
    """The learned pace's state machine: told of every answer and every 429 by the
    ``RateLimiter`` it is composed into, it sets that limiter's pace (``Gauge.set_rate``)."""

    def __init__(self, gauge: Gauge, rate: float, now: float) -> None:
        """``rate``: the configured rate (a limit taken as confirmed), or 0 to learn it."""
        self._gauge = gauge
        self._began = math.inf  # when the first request was served
        self._ramping = rate <= 0  # no evidence yet: the limiter ramps up
        self._estimate = rate if rate > 0 else None
        self._confirmed = rate > 0
        self._samples: deque[_Sample] = deque(maxlen=4)
        self._climbs = 0
        self._last_429 = -math.inf
        self._last_cut = -math.inf
        self._cuts_since = -math.inf  # the first of the recent cuts for 429s without a reset
        self._probe = Probe(AGREE)
        self._excused = False  # the last new 429 was let pass (a stray, or unmeasurable)
        # The share of 429s among recent requests, and running totals.
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=SHARE_OF)  # (time, a 429?)
        self.requests = 0  # answered, 429s included
        self.limited = 0  # 429s the law counted (not a call's own)
        self._trial: _Trial | None = None
        self._stray_share = 0.0
        self._stray_at = now
        # The current bin (one window of our own clock) and the clean bins of BEST_HORIZON.
        self._bin_start = now
        self._bin_served = 0
        self._bin_limited = 0
        self._bin_ours = False  # a 429 in it was judged ours (a limit), not a stray
        self._clean: deque[tuple[float, float]] = deque()  # (bin end, served per second)

    @property
    def ramping(self) -> bool:
        """No evidence of a limit yet: the limiter ramps its pace up."""
        return self._ramping

    # -- what the limiter tells it ------------------------------------------------------------

    def answered(self, now: float, window: float) -> bool:
        """A request got an answer that was not a 429 (``window``: the limiter's, as the gauge
        has it); returns ``ramping``. Called for every answer: plain arithmetic, and no call
        but to close a bin."""
        self._outcomes.append((now, False))
        if not self.requests:
            self._began = now
        self.requests += 1
        if now >= self._bin_start + window:
            self._close_bin(now)
        self._bin_served += 1
        trial = self._trial
        if trial is not None and self.requests - trial.requests >= trial.length:
            self._trial = None  # the lower pace held: the decrease stands
            estimate, shown = self._estimate, trial.sample
            served = max((rate for _, rate in self._clean), default=0.0)
            if self._confirmed and estimate and shown is not None and served <= shown < estimate:
                self._estimate = shown  # the limit it showed (none served more: a stray's)
            # With nothing ever measured (429s without a reset only), nothing says where a
            # limit would be: ramp up again, as at the start; but not while such 429s have come
            # back for longer than a window (a limit that tells no reset, not one burst of
            # strays): then the climb of clean windows finds it.
            self._ramping = (
                self._estimate is None
                and not self._samples
                and (
                    now - self._last_cut > BEST_HORIZON
                    or self._last_cut - self._cuts_since < window
                )
            )
        return self._ramping

    def refused(self, now: float) -> None:
        """A 429 that counts for the pool (not a call's own) was answered."""
        self._outcomes.append((now, True))
        self.requests += 1
        self.limited += 1
        if now >= self._bin_start + self._gauge.window:
            self._close_bin(now)
        self._bin_limited += 1

    def no_reset(self, now: float, round_trip: float) -> None:
        """The 429 told no reset (or one past, zero or unreadable)."""
        if now - self._last_cut >= round_trip:  # answers in flight at the last cut say nothing
            self._judge(None, now)

    def new_reset(self, sample: float | None, now: float, reset_in: float) -> None:
        """The 429 announced a new reset, ``reset_in`` seconds away; ``sample`` is the served
        rate of the window it closes, None when that window says nothing (we waited in it)."""
        self._excused = sample is None
        if sample is not None:
            self._judge(sample, now, reset_in)

    def same_reset(self, now: float) -> None:
        """Another 429 with the very same reset: the window is shut for every request in
        flight, as a limit shuts it (strays come one by one, each with a reset of its own).
        The first was ours after all."""
        self._bin_ours = True
        if self._excused:
            self._excused = False
            self._overran(now)

    # -- the law ------------------------------------------------------------------------------

    def _judge(self, sample: float | None, now: float, reset_in: float = math.inf) -> None:
        """What a 429 does to the pace: ``sample`` is the served rate of the window it closed,
        None for a 429 without a reset."""
        pace = self._gauge.rate
        if sample is not None:
            window = self._gauge.window
            recent = now - RECENT_WINDOWS * window
            before = [s for s in self._samples if s.time >= recent]
            trial = self._trial
            if trial is not None and trial.sample is not None:
                before.append(_Sample(now, trial.sample, trial.pace_before))
            self._samples.append(this := _Sample(now, sample, pace))
            tolerance = self._tolerance()
            agreeing = [s for s in before if _same_limit(sample, pace, s, tolerance)]
            if not self._confirmed:
                agreeing += self._window_after_window(now, tolerance)
            estimate, slack = self._estimate, COUNT_SLACK / window
            if self._confirmed and estimate and sample >= (1 - AGREE) * estimate - slack:
                peak = max((rate for end, rate in self._clean if end > self._last_429), default=0)
                limit = self._probe.found(estimate, sample, pace, peak, reset_in, window)
                if limit is None and self._strays(now):
                    self._excused = True  # a stray's: probe on
                else:  # (None, with more 429s than strays give: the probe met the limit)
                    self._confirm(estimate if limit is None else limit, now)
                return
            if agreeing and now - self._began >= window:  # the first window counts a burst
                self._confirm(_settled([this, *agreeing], slack), now)
                return
        if not self._trial_over(now):
            return
        if self._strays(now):
            self._excused = True
            return
        self._last_429, self._ramping = now, False
        self._probe.restart()
        self._bin_ours = True
        if sample is None:
            # No reset to measure a window by: down to what recent clean windows served (a
            # limit's level), or by half when that is no lower.
            if now - self._last_cut > BEST_HORIZON:
                self._cuts_since = now  # the first of the cuts that come back again and again
            self._last_cut = now
            clean = SAFETY * max((rate for _, rate in self._clean), default=0.0)
            # Or what the last window served, when the pace is far above it (a ramp's pace is
            # a bound, not what is sent: halving it may take many 429s to reach the limit).
            served = SAFETY * self._gauge.served_lately(now)
            if 0 < served < pace / 2:
                self._try(served, None, now)
            else:
                self._try(clean if pace / 2 < clean < pace else pace / 2, None, now)
        elif self._gauge.longer:
            self._gauge.set_rate(SAFETY * sample)  # a window longer than we knew, measured whole
        elif self._confirmed:
            # Far under a limit we knew, and not alone: a lower limit, another client on it, or
            # strays. Step down a little and see: a lower limit answers the same again.
            self._try(max(SAFETY * sample, STEP_DOWN * pace), sample, now)
        else:
            # Not under a limit we knew, though: probing past it, we have not seen it move.
            known = SAFETY * (self._estimate or 0.0)
            self._try(max(SAFETY * sample, pace / 2, min(known, pace)), sample, now)

    def _overran(self, now: float) -> None:
        """A 429 let pass as a stray (or from a window we waited in) turned out to shut the
        window for the requests behind it: our pace is over a limit. Slow down, no trial."""
        self._trial = None
        self._last_429, self._ramping = now, False
        self._probe.restart()
        sample = self._samples[-1].value if self._samples else None
        rate = self._gauge.rate * (STEP_DOWN if self._confirmed else 0.5)
        if sample is not None and now - self._samples[-1].time < self._gauge.window:
            rate = max(rate, SAFETY * sample)
        self._confirmed = False
        self._gauge.set_rate(rate)

    def _window_after_window(self, now: float, tolerance: float) -> list[_Sample]:
        """The last ``IN_A_ROW`` samples when they came in as many windows in a row and agree:
        a limit met every window, at whatever pace (strays are not that regular)."""
        last = list(self._samples)[-IN_A_ROW:]
        window = self._gauge.window
        if len(last) < IN_A_ROW or now - last[0].time > (IN_A_ROW - 0.5) * window:
            return []
        if any(b.time - a.time < window / 2 for a, b in pairwise(last)):
            return []  # not a window each: one window's 429s, or strays'
        values = [s.value for s in last]
        return last if max(values) - min(values) <= tolerance * max(values) else []

    def _trial_over(self, now: float) -> bool:
        """False while a trial is too young to judge. Ends a trial old enough, restoring the
        pace when slowing down did not make 429s rarer (and they are few): strays."""
        trial = self._trial
        if trial is None:
            return True
        done = self.requests - trial.requests
        if done < TRIAL_MIN:
            return False
        self._trial = None
        share = (self.limited - trial.limited) / done
        if STRAY_RATIO * trial.share_before <= share <= STRAY_MAX:
            # Strays came before and during: the lower share is theirs (few events). Back to
            # the pace before, but no higher than what was served clean: it may have been a
            # climb's overshoot.
            self._stray_share, self._stray_at = min(share, trial.share_before), now
            served = SAFETY * max((rate for _, rate in self._clean), default=trial.pace_before)
            self._gauge.set_rate(max(self._gauge.rate, min(trial.pace_before, served)))
        return True

    def _tolerance(self) -> float:
        """How close two samples must be to say the same limit: closer to overrule a confirmed
        one (strays' samples, bent by the pauses they cause, agree now and then)."""
        return LOWER_AGREE if self._confirmed else AGREE

    def _strays(self, now: float) -> bool:
        """True when 429s come no more often than strays would (or, under a confirmed limit,
        this one is alone among the last requests): pause, do not slow down."""
        share = self._stray_share * math.exp(-(now - self._stray_at) / STRAY_MEMORY)
        if share < 1e-4:
            self._stray_share = share = 0.0
        if self._confirmed:
            share = max(share, STRAY_PRIOR)  # a known limit is not given up for a stray or two
        if not share:
            return False
        # As many as strays would give among the last requests, and chance on top. (Only a
        # trial renews the strays' share: 429s that fit it may as well be a limit's.)
        requests, limited = self._recent(now)
        expected = share * requests
        return limited <= expected + 3 * math.sqrt(expected) + 1

    def _recent(self, now: float) -> tuple[int, int]:
        """(requests, 429s among them) of the last ``SHARE_OF`` requests, within the last
        ``SHARE_SECONDS``: at a few requests a second, what happened a minute ago is old."""
        since = now - SHARE_SECONDS
        recent = [limited for when, limited in self._outcomes if when >= since]
        return len(recent), sum(recent)

    def _confirm(self, limit: float, now: float) -> None:
        self._trial = None
        self._bin_ours = True
        self._last_429 = now
        lower = self._estimate is None or limit < (1 - AGREE) * self._estimate
        self._probe.confirmed(lower)
        if lower:
            self._clean.clear()  # a lower limit: what was served before says nothing now
        self._estimate, self._confirmed, self._ramping = limit, True, False
        self._gauge.set_rate(paced(limit, self._gauge.window))

    def _try(self, rate: float, sample: float | None, now: float) -> None:
        """Set ``rate``, on trial against the pace before."""
        before = self._gauge.rate
        requests, limited = self._recent(now)
        share = limited / max(requests, 1)
        length = max(TRIAL_REQUESTS, int(TRIAL_429S / max(share, 1e-3)))
        self._trial = _Trial(before, self.requests, self.limited, share, sample, length)
        self._gauge.set_rate(rate)

    def _close_bin(self, now: float) -> None:
        """A window of our own clock is over: climb if it was clean."""
        window = self._gauge.window
        served, limited, ours = self._bin_served, self._bin_limited, self._bin_ours
        self._bin_start = now - (now - self._bin_start) % window
        self._bin_served = self._bin_limited = 0
        self._bin_ours = False
        clean = self._clean
        while clean and clean[0][0] < now - BEST_HORIZON:
            clean.popleft()
        expected = self._stray_share * (served + limited)
        allowed = expected + 3 * math.sqrt(expected)
        if ours or limited > allowed or self._trial is not None or self._ramping:
            return
        clean.append((now, served / window))
        best = SAFETY * max(rate for _, rate in clean)
        estimate = self._estimate
        if self._confirmed and estimate is not None:
            best = min(best, paced(estimate, window))
            self._probe.clean(served, estimate, window)
        rate = self._gauge.rate
        if rate < best:
            self._gauge.set_rate(best)
        elif not self._confirmed:
            self._climb()
        elif now - self._last_429 >= self._probe.after and rate < self._gauge.ceiling:
            probed = self._probe.next_rate(rate, served, estimate, window)
            if probed is None:  # the limit was raised: climb
                self._confirmed = False
                self._climb()
            elif probed != rate:
                self._gauge.set_rate(probed)

    def _climb(self) -> None:
        """Grow by ``CLIMB``, a little more and a little less in turn: overshoots at two paces
        tell a limit (the same sample) from strays (samples that move with the pace)."""
        self._climbs += 1
        self._gauge.set_rate(self._gauge.rate * CLIMB * (1 + CLIMB_SPREAD * (-1) ** self._climbs))


def _settled(samples: list[_Sample], slack: float) -> float:
    """The limit agreeing samples show: the highest (a count errs low), but the slowest pace's
    when they differ by more than ``slack`` (a faster pace was served a bucket's savings)."""
    low = min(samples, key=lambda s: s.pace).value
    high = max(s.value for s in samples)
    return high if high - low <= slack else low


def _same_limit(value: float, pace: float, other: _Sample, tolerance: float) -> bool:
    """True when two samples agree although measured at paces apart: a limit, not our pace
    (stray 429s give samples that move with it)."""
    apart = abs(pace - other.pace) >= PACES_APART * max(pace, other.pace)
    return apart and abs(value - other.value) <= tolerance * max(value, other.value)

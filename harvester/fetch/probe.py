"""The pace under a confirmed limit (``paced``), and probing past it: when, how far, and what it
finds (steps 3 and 6 of ``harvester.fetch.limiter``'s docstring). ``RateLaw`` owns one ``Probe``.

A token bucket serves a probe past its rate from its savings for a while, then refuses until
its next token: what was served above the limit is counted, and the limit is believed raised
only once more was served above it than half a window of it (or twice what a probe that found
the limit where it was had been served: the bucket's savings). A probe that finds the limit where
it was makes the next one wait twice as long.
"""

from __future__ import annotations

# At a confirmed limit: seconds without a 429 before probing above it (twice as long after each
# probe that found the limit where it was, up to PROBE_AFTER_MAX), and the first step.
PROBE_AFTER = 5.0
PROBE_AFTER_MAX = 40.0
PROBE_STEP = 0.03
# The step doubles each clean window up to this, so that what a raised limit serves above the
# old one can be counted before the pace passes the new one.
PROBE_STEP_MAX = 0.24
# Served clean above the limit, more than this many windows of it (and more than twice a token
# bucket's savings seen): the limit was raised.
RAISED_WINDOWS = 0.5
# A sample is a count: a request or two more or less is no news, however small the limit.
COUNT_SLACK = 2
# Pace this far under a known limit (``--rate R`` too, as its help says): room for the jitter
# between our clock and the server's; as close as CLOSER to a high one (``paced``).
SAFETY = 0.97
CLOSER = 0.98
# At a confirmed limit's pace, a 429 whose window counted this close to the limit counted the
# limit (a count of whole buckets errs by one, 1% of a window); a request more or less at a
# small limit is a small limit lowered.
LEFT_OVER = 0.01
# A reset at most this many requests away at the limit's pace is a token bucket's next token.
NEXT_TOKENS = 1.0


def paced(limit: float, window: float) -> float:
    """The pace under a confirmed limit: ``SAFETY`` under it, or ``CLOSER`` where that still
    leaves ``COUNT_SLACK`` requests a window (a count is a request or two off)."""
    return max(SAFETY * limit, min(CLOSER * limit, limit - COUNT_SLACK / window))


class Probe:
    """The probing above one confirmed limit: its step, its wait, and what it was served."""

    def __init__(self, agree: float) -> None:
        self._agree = agree  # two limits this close are the same
        self.step = PROBE_STEP
        self.after = PROBE_AFTER  # seconds without a 429 before probing
        self._dwell = 0  # clean windows at the current step
        # Served above the limit since it was last confirmed, and the most of it that came
        # before a 429 confirmed the same limit again (a token bucket's savings).
        self._excess = 0.0
        self._savings = 0.0

    def restart(self) -> None:
        """A 429 of ours: the next probe starts from its first step."""
        self.step, self._dwell = PROBE_STEP, 0

    def confirmed(self, lower: bool) -> None:
        """The limit was confirmed again (``lower``: one lower than we knew)."""
        self.restart()
        self._excess = 0.0
        if lower:
            self.after, self._savings = PROBE_AFTER, 0.0

    def clean(self, served: int, limit: float, window: float) -> None:
        """A window of ours served ``served`` without a 429 of ours, under ``limit``."""
        self._excess += max(0.0, served - limit * window)

    def next_rate(
        self, rate: float, served: int, limit: float | None, window: float
    ) -> float | None:
        """A clean window, and time to probe: the rate to go on at, or None when the limit
        has been raised (served clean above it for longer than savings last)."""
        # Each step holds until it has had room for a 429: at a few requests a window, a step
        # of a few percent may take more than one.
        self._dwell += 1
        if self._dwell * self.step * served < 1:
            return rate
        self._dwell = 0
        if (
            limit is not None
            and rate > (1 + self._agree) * limit
            and self._excess > max(limit * window * RAISED_WINDOWS, 2 * self._savings)
        ):
            self.after = PROBE_AFTER
            return None
        rate *= 1 + self.step
        self.step = min(2 * self.step, PROBE_STEP_MAX)
        return rate

    def found(
        self, limit: float, sample: float, pace: float, peak: float, reset_in: float, window: float
    ) -> float | None:
        """A 429 at ``limit``'s pace or past it, closing a ``window`` that served ``sample`` per
        second, its reset ``reset_in`` seconds away (``peak``: the most a window of ours was
        served since the limit was confirmed): the limit it shows, or None for a stray's."""
        if pace <= (1 + PROBE_STEP / 2) * CLOSER * limit:  # the limit's pace, not a probe's
            # At its pace, a 429 whose window served the limit is what is left of the probe that
            # found it (a sliding window remembers a whole window of it); one whose window served
            # less says the limit is a little lower than that.
            if sample >= (1 - LEFT_OVER) * limit:
                return limit
            return min(sample, (1 - PROBE_STEP) * limit)
        if peak > (1 + self._agree) * sample:
            return None  # a window of ours was served more since: no limit there
        if reset_in <= NEXT_TOKENS / limit and self._excess <= max(
            limit * window * RAISED_WINDOWS, 2 * self._savings
        ):
            # Refused until the next token before we were served more above the limit than
            # savings would give: the window's sample was savings; the limit is where it was.
            found = min(sample, limit)
        else:
            found = sample
        if found <= (1 + self._agree) * limit:
            # Found where it was: the next probe waits longer, and what this one was served
            # above the limit came from savings.
            self.after = min(2 * self.after, PROBE_AFTER_MAX)
            self._savings = max(self._savings, self._excess)
        return found

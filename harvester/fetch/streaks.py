"""Which 429s are one call's own, not the account's limit: a call refused again and again
while the others pass (an API that limits one resource), or refused again right after the far
reset it announced. The limiter learns nothing from those, and pauses the pool for them only
briefly: the call waits alone."""

from __future__ import annotations

from dataclasses import dataclass

# Targets followed at most.
MAX_STREAKS = 1024
# A call refused again after this many other requests were served since its first 429 in a
# row, with this share of the others refused at most, is refused on its own (under a limit, a
# call is refused twice in a row by chance about as often as the share of 429s, squared).
OWN_SERVED = 10
OWN_SHARE = 0.1


@dataclass(slots=True)
class _Streak:
    """A target's 429s in a row: the answers served and the 429s met (every call's) when the
    first came, whether the last that counted for the pool paused it for long, and how many
    of its own came since the first."""

    served: int
    refused: int
    long: bool
    mine: int = 0


class OwnRefusals:
    """The targets (call ids) whose last 429 counted for the pool, judged against the
    limiter's running totals: ``requests`` answered and ``limited`` (429s that counted)."""

    def __init__(self) -> None:
        self._streaks: dict[str, _Streak] = {}
        self.count = 0  # 429s judged a call's own (none of the limiter's totals holds them)

    def own(self, target: str, requests: int, limited: int) -> bool:
        """True (and counted) when this 429 is ``target``'s own: since its first 429 in a row,
        at least ``OWN_SERVED`` other requests were served and at most ``OWN_SHARE`` of the
        others were refused (a limit refuses every call alike); or its last 429 paused the pool
        for long, and now that its reset has passed it is refused again."""
        streak = self._streaks.get(target)
        if streak is None:
            return False
        if streak.long:
            self.count += 1
            return True
        served = requests - limited - streak.served
        # Every 429 since its first, other calls' own ones too, but this call's.
        others = limited + self.count - streak.refused - streak.mine
        own = served >= OWN_SERVED and others <= OWN_SHARE * (served + others)
        streak.mine += 1
        self.count += own
        return own

    def counted(self, target: str, long: bool, requests: int, limited: int) -> None:
        """``target`` had a 429 that counted for the pool (``long``: it paused the pool for
        long). Its first in a row marks what was served and refused until then, which its next
        429s are judged against."""
        streaks = self._streaks
        streak = streaks.get(target)
        if streak is not None:
            streak.long = long
            return
        if len(streaks) >= MAX_STREAKS:  # calls that ended without ``forget`` (cancelled)
            del streaks[next(iter(streaks))]
        streaks[target] = _Streak(requests - limited, limited + self.count, long)

    def forget(self, target: str) -> None:
        """``target``'s call has ended (harvested, or given up): its 429s are over."""
        self._streaks.pop(target, None)

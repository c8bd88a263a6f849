"""The retry policy of one call, on tenacity.

- Transient failures (connection errors, timeouts, truncated or garbled bodies, 5xx) are retried
  with exponential backoff and jitter, up to ``max_attempts`` attempts.
- A 429 waits until the announced reset (the limiter has already paused the whole pool until
  then, unless the 429 was the call's own) and does not count against ``max_attempts``; only
  ``max_rate_limited`` 429s in a row for one call give up on it.
- While nothing has answered in the run, a request without an answer is tried
  ``FIRST_CONTACT_ATTEMPTS`` times at most: an API that is not there is told within seconds.
- A call whose 429s are its own (refused again and again while other calls are served: the
  limiter judges) waits alone, and is given up as ``call-rate-limited`` after ``OWN_429S`` such
  429s, or sooner when its wait would take it past ``OWN_SECONDS``.
- Anything else (404, other 4xx, 401/403) is not retried; nor is ``CancelledError``, which is no
  ``Exception``.

The policy is tenacity's ``retry``, ``stop`` and ``wait``, built from the small policies below
once per ``Retrier``. They read the call's ``Tally``, which tenacity's ``before`` and ``after``
hooks keep: ``attempts`` is tenacity's own attempt number, so the two never disagree.

tenacity keeps per-iteration state on its retrying object (thread-local, so shared by every
coroutine of a thread), so each call that needs a retry gets its own ``AsyncRetrying``. Setting
one up costs more than a whole successful call's own work, so the first attempt runs before
it: whatever that attempt raises, tenacity takes as the outcome of its attempt 1, and judges it
by the same policy as every later one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from harvester.clock import Clock, sleep_unless
from harvester.errors import (
    ApiError,
    CallFailed,
    FailureCode,
    RateLimited,
    Stopping,
    TransientError,
)
from harvester.fetch.limiter import RateLimiter
from harvester.ids import is_call_id
from harvester.logs import per_call
from harvester.settings.config import Settings
from harvester.stats import RunStats

log = logging.getLogger("harvester")

A = TypeVar("A")
R = TypeVar("R")

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
BACKOFF_JITTER = 0.5
# Until the API has answered anything in the run, a request that gets no answer is tried this
# many times at most: an API that is not there (a wrong host or port) is told within seconds.
FIRST_CONTACT_ATTEMPTS = 3
# A call refused on its own (its 429s are not the account's) is given up after this many such
# 429s, or when waiting for the next attempt would take it past this many seconds of them.
OWN_429S = 5
OWN_SECONDS = 60.0

# Retry only what is known to be transient (a 429 is: a RateLimited is a TransientError).
RETRY_TRANSIENT = retry_if_exception_type(TransientError)


@dataclass(slots=True)
class Tally:
    """How one call's attempts went so far."""

    target: str  # what the attempts ask for (a call id, a page's URL), for the log
    attempts: int = 0  # made so far, 429s included: tenacity's attempt number
    failures: int = 0  # transient failures other than 429s: against max_attempts
    rate_limited: int = 0  # 429s since the last other failure
    own: int = 0  # of those, judged the call's own (see the module docstring)
    own_since: float = 0.0  # when the first of them came (clock seconds)


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: exponential, with jitter."""
    exponential = BACKOFF_INITIAL * 2 ** max(failures - 1, 0)
    return float(min(BACKOFF_MAX, exponential) + random.uniform(0, BACKOFF_JITTER))


class _Retrying(AsyncRetrying):
    """tenacity's retrying object for one call, and the call's tally that the policies read."""

    def __init__(self, tally: Tally, **policy: Any) -> None:
        super().__init__(**policy)
        self.tally = tally


def tally_of(state: RetryCallState) -> Tally:
    """The tally of the call that ``state`` is about."""
    retrying = state.retry_object
    assert isinstance(retrying, _Retrying), "a Retrier's policy runs under its own retrying"
    return retrying.tally


def _failure(state: RetryCallState) -> BaseException | None:
    assert state.outcome is not None, "policies run on an attempt's outcome"
    return state.outcome.exception()


class stop_after_failures(stop_base):  # named as tenacity names its own policies
    """Stop once ``max_attempts`` attempts failed; a 429 is no failed attempt."""

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts

    def __call__(self, state: RetryCallState) -> bool:
        rate_limited = isinstance(_failure(state), RateLimited)
        return not rate_limited and tally_of(state).failures >= self.max_attempts


class stop_after_rate_limits(stop_base):
    """Stop at the ``max_rate_limited``-th 429 in a row."""

    def __init__(self, max_rate_limited: int) -> None:
        self.max_rate_limited = max_rate_limited

    def __call__(self, state: RetryCallState) -> bool:
        rate_limited = isinstance(_failure(state), RateLimited)
        return rate_limited and tally_of(state).rate_limited >= self.max_rate_limited


class stop_before_contact(stop_base):
    """Stop at the ``FIRST_CONTACT_ATTEMPTS``-th failure without an answer while the API has
    answered nothing in the run (``stats.statuses`` is empty)."""

    def __init__(self, stats: RunStats) -> None:
        self.stats = stats

    def __call__(self, state: RetryCallState) -> bool:
        error = _failure(state)
        unanswered = isinstance(error, TransientError) and error.status is None
        return (
            unanswered
            and not self.stats.statuses
            and tally_of(state).failures >= FIRST_CONTACT_ATTEMPTS
        )


class stop_own_429s(stop_base):
    """Stop at a call's ``OWN_429S``-th 429 of its own, or at one whose wait would take its own
    429s past ``OWN_SECONDS``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __call__(self, state: RetryCallState) -> bool:
        error = _failure(state)
        if not (isinstance(error, RateLimited) and error.own):
            return False
        tally = tally_of(state)
        now = self.clock.monotonic()
        until = error.retry_at if error.retry_at is not None else now
        return tally.own >= OWN_429S or until - tally.own_since > OWN_SECONDS


class wait_backoff(wait_base):
    """``backoff`` over the failures in a row of the kind that just came: 429s, or the rest."""

    def __call__(self, state: RetryCallState) -> float:
        tally = tally_of(state)
        rate_limited = isinstance(_failure(state), RateLimited)
        return backoff(tally.rate_limited if rate_limited else tally.failures)


class wait_for_reset(wait_base):
    """Until the reset a 429 announced (on ``clock``); ``otherwise`` when none was announced."""

    def __init__(self, clock: Clock, otherwise: wait_base) -> None:
        self.clock = clock
        self.otherwise = otherwise

    def __call__(self, state: RetryCallState) -> float:
        error = _failure(state)
        if isinstance(error, RateLimited) and error.retry_at is not None:
            wait = error.retry_at - self.clock.monotonic()
            # A reset that has come is taken at once; a call refused so again in a row is
            # told nothing it can wait for, and backs off.
            if wait > 0 or tally_of(state).rate_limited <= 1:
                return max(0.0, wait)
        return self.otherwise(state)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """What the retry policy takes of the settings: when a call is given up."""

    max_attempts: int
    max_rate_limited: int

    @classmethod
    def of(cls, settings: Settings) -> RetrySettings:
        return cls(settings.max_attempts, settings.max_rate_limited)


class Retrier:
    """Runs one API operation (a call's events, a page of the call list) under the policy."""

    def __init__(
        self,
        settings: RetrySettings,
        stats: RunStats,
        clock: Clock,
        stop: asyncio.Event | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._stats = stats
        self._clock = clock
        self._stop = stop  # once set, no call is tried again (see ``_sleep``)
        self._limiter = limiter  # told when a call's 429s are over
        # The policy, once: what is retried, when to give up, how long to wait in between.
        self._retry = RETRY_TRANSIENT
        self._give_up = (
            stop_after_failures(settings.max_attempts)
            | stop_after_rate_limits(settings.max_rate_limited)
            | stop_own_429s(clock)
            | stop_before_contact(stats)
        )
        self._wait = wait_for_reset(clock, otherwise=wait_backoff())

    async def _sleep(self, seconds: float) -> None:
        """Wait before the next attempt; once the run is stopping, there is none."""
        if not await sleep_unless(self._clock, seconds, self._stop):
            raise Stopping("the run is stopping: not tried again")

    async def run(self, operation: Callable[[A], Awaitable[R]], argument: A) -> R:
        """``await operation(argument)``, retried as the module docstring says.

        Raises the last ``ApiError`` when it cannot succeed, its ``attempts`` attribute set.
        ``FatalApiError`` is raised at once.
        """
        try:
            return await operation(argument)
        except Exception as error:  # tenacity judges it, as attempt 1
            first = error
        return await self._after_first_failure(operation, argument, first)

    async def _after_first_failure(
        self, operation: Callable[[A], Awaitable[R]], argument: A, first: Exception
    ) -> R:
        """Attempts 2 and on, under tenacity; ``first`` is what attempt 1 raised."""
        retrying = _Retrying(
            Tally(str(argument)),
            retry=self._retry,
            stop=self._give_up,
            wait=self._wait,
            before=self._begin_attempt,
            after=self._count_failure,
            sleep=self._sleep,
            reraise=True,
        )
        tally = retrying.tally
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number == 1:
                        raise first
                    result = await operation(argument)
        except RateLimited as exc:
            if not exc.own:
                exc.attempts = tally.attempts
                raise
            given_up = CallFailed(
                429,
                FailureCode.CALL_RATE_LIMITED,
                f"answered 429 {tally.rate_limited} times in a row while other calls were "
                "served: the API limits this call, not the account (retry-failed takes it on "
                "later)",
            )
            given_up.attempts = tally.attempts
            raise given_up from exc
        except ApiError as exc:
            exc.attempts = tally.attempts
            raise
        finally:
            if self._limiter is not None and tally.rate_limited:
                self._limiter.forget(tally.target)
        return result

    def _begin_attempt(self, state: RetryCallState) -> None:
        tally_of(state).attempts = state.attempt_number
        if state.attempt_number > 1:
            self._stats.retries += 1

    def _count_failure(self, state: RetryCallState) -> None:
        """tenacity's ``after`` hook: a transient failure (a 429 or another) is in the tally
        before ``stop`` and ``wait`` read it."""
        tally = tally_of(state)
        error = _failure(state)
        if isinstance(error, RateLimited):
            tally.rate_limited += 1
            _log_retry(tally, error, state.attempt_number)
            if error.own:
                if not tally.own:
                    tally.own_since = self._clock.monotonic()
                    log.info(
                        "call %s is answered 429 while other calls are served: it waits on its "
                        "own, and is given up after %d such answers or %.0f s",
                        tally.target,
                        OWN_429S,
                        OWN_SECONDS,
                    )
                tally.own += 1
            return
        assert isinstance(error, TransientError), "tenacity retries nothing else"
        tally.failures += 1
        tally.rate_limited = tally.own = 0
        _log_retry(tally, error, state.attempt_number)


def _log_retry(tally: Tally, error: TransientError, attempt: int) -> None:
    # Named as call-failed names a call; a page of the call list by its URL.
    what = "call_id" if is_call_id(tally.target) else "page_url"
    per_call(
        logging.INFO,
        "retry",
        "%s: %s (attempt %d)",
        tally.target,
        error,
        attempt,
        **{what: tally.target},
        code=error.code,
        status=error.status,
        attempt=attempt,
    )

"""The retry policy of one call, on tenacity.

- Transient failures (connection errors, timeouts, truncated or garbled bodies, 5xx) are retried
  with exponential backoff and jitter, up to ``max_attempts`` attempts.
- A 429 waits until the announced reset (the client has already paused the whole pool until
  then) and does not count against ``max_attempts``; only ``max_rate_limited`` 429s in a row for
  one call give up on it.
- Anything else (404, other 4xx, 401/403) is not retried.

tenacity keeps per-iteration state on its retrying object (thread-local, so shared by every
coroutine of a thread), so each call that needs a retry gets its own ``AsyncRetrying``; the
policies read the call's tally from the attempt's arguments. The first attempt runs without
tenacity: setting it up costs more than a whole successful call's own work.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from harvester.clock import Clock
from harvester.config import Settings
from harvester.errors import ApiError, RateLimited, TransientError
from harvester.logs import event
from harvester.stats import RunStats

A = TypeVar("A")
R = TypeVar("R")

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
BACKOFF_JITTER = 0.5


@dataclass(slots=True)
class Tally:
    """How one call's attempts went so far."""

    attempts: int = 0
    transient: int = 0
    rate_limited: int = 0


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: exponential, with jitter."""
    exponential = BACKOFF_INITIAL * 2 ** max(failures - 1, 0)
    return float(min(BACKOFF_MAX, exponential) + random.uniform(0, BACKOFF_JITTER))


class Retrier:
    """Runs one API operation (a call's events, a page of the call list) under the policy."""

    def __init__(self, settings: Settings, stats: RunStats, clock: Clock) -> None:
        self._stats = stats
        self._clock = clock
        self._max_attempts = settings.max_attempts
        self._max_rate_limited = settings.max_rate_limited
        self._retry = retry_if_exception_type(TransientError)

    async def run(self, operation: Callable[[A], Awaitable[R]], argument: A) -> R:
        """``await operation(argument)``, retried as the module docstring says.

        Raises the last ``ApiError`` when it cannot succeed, its ``attempts`` attribute set.
        ``FatalApiError`` is raised at once.
        """
        tally = Tally()
        try:
            # Most operations succeed at once: that path stays free of tenacity's set-up.
            try:
                return await self._attempt(operation, argument, tally)
            except TransientError as first:
                if self._gives_up(tally, first):
                    raise
                await self._clock.sleep(self._delay(tally, first))
            retrying = AsyncRetrying(
                sleep=self._clock.sleep,
                stop=lambda state: self._gives_up(state.args[2], _error_of(state)),
                wait=lambda state: self._delay(state.args[2], _error_of(state)),
                retry=self._retry,
                reraise=True,
            )
            result: R = await retrying(self._attempt, operation, argument, tally)
        except ApiError as exc:
            exc.attempts = tally.attempts
            raise
        return result

    async def _attempt(
        self, operation: Callable[[A], Awaitable[R]], argument: A, tally: Tally
    ) -> R:
        tally.attempts += 1
        if tally.attempts > 1:
            self._stats.retries += 1
        try:
            return await operation(argument)
        except RateLimited:
            tally.rate_limited += 1
            raise
        except TransientError as exc:
            tally.transient += 1
            tally.rate_limited = 0
            event(
                logging.DEBUG,
                "retry",
                "%s: %s (attempt %d)",
                argument,
                exc,
                tally.attempts,
                target=str(argument),
                code=exc.code,
                status=exc.status,
                attempt=tally.attempts,
            )
            raise

    def _gives_up(self, tally: Tally, error: BaseException | None) -> bool:
        if isinstance(error, RateLimited):
            return tally.rate_limited >= self._max_rate_limited
        return tally.transient >= self._max_attempts

    def _delay(self, tally: Tally, error: BaseException | None) -> float:
        if isinstance(error, RateLimited):
            if error.retry_at is not None:
                return max(0.0, error.retry_at - self._clock.monotonic())
            return backoff(tally.rate_limited)
        return backoff(tally.transient)


def _error_of(state: RetryCallState) -> BaseException | None:
    assert state.outcome is not None
    return state.outcome.exception()

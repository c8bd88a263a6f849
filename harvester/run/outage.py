"""Telling an outage from calls that fail on their own.

A call that fails after every retry without a proper answer (connection errors, timeouts, 5xx)
may have a problem of its own, or the API may be down. ``OutageGuard`` holds such failures back,
uncommitted, while they come in a row; any answer (a harvested call, a 404) says the API is up
and releases them to the failures file. When ``threshold`` are held, or when the run ends with
some held, the guard calls its ``probe``: the pool (``Pool._probe``, which also sets the
``threshold``) asks the API for something that worked before in this run (a call harvested,
else the first page of the call list). If that fails too, the API is down:
``ApiUnavailable`` stops the run, and the held calls, never committed, are taken on by the next
run. If it works, they failed on their own and go to the failures file. So an outage never
fills the failures file, and a handful of calls that always fail never stop a run for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from harvester.errors import ApiUnavailable, CallFailed, FailureCode, Stopping, TransientError
from harvester.store.ndjson import Failure


def about_the_url(status: int | None) -> bool:
    """A status that may be the API's word on the base URL rather than on the call: a 404, or
    a redirect (to another scheme or host)."""
    return status is not None and (status == 404 or 300 <= status < 400)


class OutageGuard:
    """Holds unanswered failures until the API is known to be up (see the module docstring).

    ``threshold`` says how many held failures make it ask (it may change as the run learns);
    ``probe`` makes a request that worked before, raising ``TransientError`` when it fails too
    (or ``ApiUnavailable`` itself, when it knows better); ``release`` sends a held failure on
    to the failures file. A stop while it asks leaves what is held undone, for the next run.
    """

    def __init__(
        self,
        threshold: Callable[[], int],
        probe: Callable[[list[Failure]], Awaitable[object]],
        release: Callable[[Failure], Awaitable[None]],
    ) -> None:
        self._threshold = threshold
        self._probe = probe
        self._release = release
        self._held: list[Failure] = []
        self._unanswered = 0  # of them, those that are not about the URL
        self._answers = 0
        self._probing = asyncio.Lock()

    @property
    def held(self) -> int:
        """Failures held back now."""
        return len(self._held)

    @property
    def holds_unanswered(self) -> bool:
        """True when a held failure had no proper answer (not the URL's question: a 404 or a
        redirect before anything worked)."""
        return self._unanswered > 0

    async def answered(self) -> None:
        """The API answered a call: it is up, and what was held failed on its own."""
        self._answers += 1
        if self._held:
            await self._flush()

    async def unanswered(self, failure: Failure) -> None:
        """A call failed after every retry without an answer; raises ``ApiUnavailable`` when
        this makes ``threshold`` in a row and the API is down."""
        self._held.append(failure)
        self._unanswered += not about_the_url(failure.status)
        if len(self._held) >= self._threshold():
            await self._verify()

    async def settle(self) -> None:
        """The run is ending: what is held goes to the failures file if the API is up."""
        if self._held:
            await self._verify()

    async def _verify(self) -> None:
        async with self._probing:
            if not self._held:
                return  # an answer released them while another worker was asking
            answers, held, last = self._answers, len(self._held), self._held[-1]
            try:
                await self._probe(list(self._held))
            except Stopping:
                return  # the run is stopping: what is held stays undone, for the next run
            except CallFailed:
                pass  # an answer, if not the one hoped for: the API is up
            except TransientError as exc:
                if self._answers == answers:
                    raise ApiUnavailable(
                        exc.status,
                        FailureCode.API_UNAVAILABLE,
                        f"{held} call{'s' if held > 1 else ''} in a row failed after every "
                        f"retry (last: {last.code}: "
                        f"{last.message}), and so did a call that worked before ({exc}). "
                        "Nothing is lost: once the API is back (check the base URL and the "
                        "network too), run the same command again and it takes them on",
                    ) from exc
            await self._flush()

    async def _flush(self) -> None:
        held, self._held, self._unanswered = self._held, [], 0
        for failure in held:
            await self._release(failure)

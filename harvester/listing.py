"""Where a nightly job's call ids come from: the API's call list, within a time window.

The API has no date filter. So the list is read newest first (``sortOrder=desc``), following
``Link: rel="next"`` exactly as given (never computing page numbers), keeping the calls whose
``startTime`` is in ``[since, until)`` and stopping after the first page that reaches back
before ``since``. Pages flow to the workers as they arrive.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from yarl import URL

from harvester.client import CallEventsClient
from harvester.credentials import redact_url
from harvester.errors import (
    ApiError,
    ApiUnavailable,
    FatalApiError,
    TransientError,
)
from harvester.exactjson import Inexact
from harvester.retry import Retrier
from harvester.window import Window

log = logging.getLogger("harvester")


def start_time(call: dict[str, Any]) -> datetime | None:
    """A listed call's ``startTime``, or None when it has none that parses."""
    value = call.get("startTime")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ListedCall:
    """A call of the API's list: its id, and its record as an NDJSON line (``--calls-output``);
    ``inexact`` says why, if so, the record would not be written as the API sent it."""

    call_id: str
    record: bytes
    inexact: Inexact | None = None
    start: datetime | None = None  # its startTime: which night it belongs to


@dataclass(slots=True)
class Page:
    """The calls of one list page that fall in the window, and where the list goes on."""

    calls: list[ListedCall]
    next_url: str | None
    listed: int  # calls on the page, in the window or not
    undated: int  # calls without a usable startTime: not placed in any window
    oldest: datetime | None = None  # the oldest start the page reached (past the window too)


async def list_window(
    client: CallEventsClient,
    retrier: Retrier,
    window: Window,
    page_size: int,
    resume_from: str | None = None,
) -> AsyncGenerator[Page, None]:
    """The window's calls, page by page, newest first; ``resume_from`` is a saved next link.

    Raises ``ApiUnavailable`` when a page cannot be had after every retry for want of an
    answer, ``FatalApiError`` when the API refuses it, or when a next link leads back to a page
    already read (the list could never be known to be whole).
    """
    url = URL(resume_from, encoded=True) if resume_from else client.calls_url(page_size)
    resuming = resume_from is not None
    followed = {str(url)}
    while True:
        try:
            records, next_url, inexact = await retrier.run(client.calls_page, url)
        except FatalApiError:
            raise
        except ApiError as exc:
            if resuming:
                # A saved link may expire; what was done is in the ledger, so start over.
                log.info(
                    "the saved place in the call list no longer works (%s); listing from the top",
                    exc,
                )
                url, resuming = client.calls_url(page_size), False
                followed = {str(url)}
                continue
            shown = redact_url(str(url))
            if isinstance(exc, TransientError):
                raise ApiUnavailable(
                    exc.status,
                    "api-unavailable",
                    f"cannot read the call list at {shown}: {exc}. Nothing is lost: run the same "
                    "command again once the API is back",
                ) from None
            raise FatalApiError(
                exc.status, "listing-failed", f"cannot read the call list at {shown}: {exc}"
            ) from None
        resuming = False
        calls: list[ListedCall] = []
        undated = 0
        reached_back = False
        oldest: datetime | None = None
        for number, call in enumerate(records):
            moment = start_time(call)
            call_id = call.get("id")
            if moment is None or not isinstance(call_id, str):
                undated += 1
                continue
            oldest = moment if oldest is None else min(oldest, moment)
            if moment < window.since:
                reached_back = True  # newest first: everything after this is older still
                break
            if moment < window.until:
                wrong = inexact[number] if inexact is not None else None
                line = b"" if wrong else orjson.dumps(call, option=orjson.OPT_APPEND_NEWLINE)
                calls.append(ListedCall(call_id, line, wrong, moment))
        more = None if reached_back or next_url is None else str(next_url)
        if more is not None and more in followed:
            yield Page(calls, None, len(records), undated, oldest)  # this page's calls are good
            raise FatalApiError(
                200,
                "listing-loop",
                f"the call list's next link leads back to a page already read "
                f"({redact_url(more)}): the list cannot be read whole. Report it to the API's "
                "owners",
            )
        yield Page(calls, more, len(records), undated, oldest)
        if more is None:
            return
        followed.add(more)
        url = URL(more, encoded=True)


@dataclass(slots=True)
class _PageMark:
    """A listed page: where the list goes on after it, the oldest start it reached, and its
    calls not yet committed."""

    next_url: str
    oldest: datetime | None = None
    outstanding: int = 0


class ListingPlace:
    """The place in the call list up to which every call is committed: the next link after the
    last page whose calls all are, saved with each commit so that a resumed night need not list
    from the top. The pool says which calls each page brought; the sink, which got committed.
    """

    def __init__(self) -> None:
        self.cursor: str | None = None
        # The oldest start of the page before the cursor: the cursor's place in time, which
        # tells, of two places in the list, the earlier (newest first: the newer time).
        self.cursor_time: datetime | None = None
        self._pages: deque[_PageMark] = deque()
        self._page_of: dict[str, _PageMark] = {}
        self._page: _PageMark | None = None

    def page(self, next_url: str, oldest: datetime | None = None) -> None:
        """A page begins; the list goes on at ``next_url`` after it ("" at the end); ``oldest``
        is the oldest start it reached."""
        self._page = _PageMark(next_url, oldest)

    def expect(self, key: str) -> None:
        """``key``, of the current page, is on its way: the page waits for its commit."""
        assert self._page is not None
        self._page.outstanding += 1
        self._page_of[key] = self._page

    def page_claimed(self) -> None:
        """Every call of the current page has been claimed (and ``expect``-ed where new)."""
        assert self._page is not None
        self._pages.append(self._page)
        self._page = None
        self._advance()

    def committed(self, keys: Iterable[str]) -> None:
        """``keys`` are durable now."""
        if not self._page_of:
            return
        for key in keys:
            page = self._page_of.pop(key, None)
            if page is not None:
                page.outstanding -= 1
        self._advance()

    def _advance(self) -> None:
        while self._pages and self._pages[0].outstanding == 0:
            done = self._pages.popleft()
            self.cursor, self.cursor_time = done.next_url, done.oldest

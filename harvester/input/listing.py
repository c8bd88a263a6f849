"""Where a nightly job's call ids come from: the API's call list, within a time window.

The API has no date filter. So the list is read newest first (``sortOrder=desc``), following
``Link: rel="next"`` exactly as given (never computing page numbers), keeping the calls whose
``startTime`` is in ``[since, until)`` and stopping after the first page that reaches back
before ``since``. Pages flow to the workers as they arrive.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from yarl import URL

from harvester.credentials import redact_url
from harvester.errors import (
    ApiError,
    ApiUnavailable,
    FailureCode,
    FatalApiError,
    TransientError,
)
from harvester.fetch.client import CallEventsClient
from harvester.fetch.exactjson import Inexact
from harvester.fetch.retry import Retrier
from harvester.settings.window import Window

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
            raise _unreadable(exc, url) from exc
        resuming = False
        calls, undated, oldest, reached_back = _in_window(records, inexact, window)
        more = None if reached_back or next_url is None else str(next_url)
        if more is not None and more in followed:
            yield Page(calls, None, len(records), undated, oldest)  # this page's calls are good
            raise FatalApiError(
                200,
                FailureCode.LISTING_LOOP,
                f"the call list's next link leads back to a page already read "
                f"({redact_url(more)}): the list cannot be read whole. Report it to the API's "
                "owners",
            )
        yield Page(calls, more, len(records), undated, oldest)
        if more is None:
            return
        followed.add(more)
        url = URL(more, encoded=True)


def _unreadable(exc: ApiError, url: URL) -> FatalApiError:
    """What a page of the list that cannot be had ends the run with: an outage (exit 6) when
    no answer came, else the API's refusal (exit 3)."""
    shown = redact_url(str(url))
    if isinstance(exc, TransientError):
        return ApiUnavailable(
            exc.status,
            FailureCode.API_UNAVAILABLE,
            f"cannot read the call list at {shown}: {exc}. Nothing is lost: run the same "
            "command again once the API is back",
        )
    return FatalApiError(
        exc.status, FailureCode.LISTING_FAILED, f"cannot read the call list at {shown}: {exc}"
    )


def _in_window(
    records: list[dict[str, Any]], inexact: list[Inexact | None] | None, window: Window
) -> tuple[list[ListedCall], int, datetime | None, bool]:
    """Of one page (newest first): its calls in ``window``, how many had no usable start, the
    oldest start it reached, and whether it reached back past the window's start."""
    calls: list[ListedCall] = []
    undated = 0
    oldest: datetime | None = None
    for number, call in enumerate(records):
        moment = start_time(call)
        call_id = call.get("id")
        if moment is None or not isinstance(call_id, str):
            undated += 1
            continue
        oldest = moment if oldest is None else min(oldest, moment)
        if moment < window.since:
            return calls, undated, oldest, True  # newest first: the rest is older still
        if moment < window.until:
            wrong = inexact[number] if inexact is not None else None
            line = b"" if wrong else orjson.dumps(call, option=orjson.OPT_APPEND_NEWLINE)
            calls.append(ListedCall(call_id, line, wrong, moment))
    return calls, undated, oldest, False

"""The API client: one call's events, as one or more HTTP requests, and a page of the call list.

Every request goes out from here, and every answer that is not a success becomes one of
``harvester.errors``' exceptions here, saying whether it is transient, a rate limit, permanent
for the call, or fatal for the run. Beside it: ``answers`` reads an answer, ``errormap`` says in
our words what aiohttp raised, ``reset`` reads a 429's wait. This module, ``answers`` and
``errormap`` are the harvester's only importers of aiohttp (the simulator, a server, aside).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from harvester import __version__
from harvester.clock import Clock
from harvester.credentials import Secret, redact_url
from harvester.errors import (
    ApiError,
    CallFailed,
    FailureCode,
    FatalApiError,
    RateLimited,
    TransientError,
)
from harvester.fetch.answers import (
    Answer,
    Event,
    ListPage,
    error_fields,
    parse_events,
    read_error_body,
    refuse_inexact,
)
from harvester.fetch.errormap import ErrorMap, body_cut_short, kind, phrase
from harvester.fetch.limiter import RateLimiter
from harvester.fetch.reset import rate_limit_delay, reset_said
from harvester.ids import is_call_id
from harvester.logs import clip
from harvester.settings.config import Settings
from harvester.stats import RunStats

log = logging.getLogger("harvester")

# Pages of one call's events at most (a next link back to a page already read fails at once),
# and pages in a row that hold no event but link on.
MAX_PAGES = 10_000
EMPTY_PAGES = 3


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What the client takes of the settings, and nothing else."""

    base_url: str
    user_id: str
    api_token: Secret
    api_secret: Secret
    proxy: str | None
    timeout: float
    concurrency: int
    max_body_mb: float
    max_events: int

    @classmethod
    def of(cls, settings: Settings) -> ClientSettings:
        return cls(
            base_url=settings.base_url,
            user_id=settings.user_id,
            api_token=settings.api_token,
            api_secret=settings.api_secret,
            proxy=settings.proxy,
            timeout=settings.timeout,
            concurrency=settings.concurrency,
            max_body_mb=settings.max_body_mb,
            max_events=settings.max_events,
        )


class CallEventsClient:
    """``GET /v1/users/{userId}/calls/{callId}/events``, with Link paging, on one session.

    Use as an async context manager. Every request first takes a turn from the shared
    ``RateLimiter``; a 429 pauses that limiter for the whole pool.
    """

    def __init__(
        self, settings: ClientSettings, limiter: RateLimiter, stats: RunStats, clock: Clock
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._stats = stats
        self._clock = clock
        self._base = URL(settings.base_url.rstrip("/"))
        self._origin = self._base.origin()
        self._max_body = int(settings.max_body_mb * 1024 * 1024)
        self._max_events = settings.max_events
        self._prefix = (
            f"{self._base.raw_path.rstrip('/')}/v1/users/{quote(settings.user_id, safe='')}"
        )
        self._session: aiohttp.ClientSession | None = None
        self._errors = ErrorMap(settings.timeout, self._origin, settings.proxy)

    async def __aenter__(self) -> CallEventsClient:
        credentials = (
            f"{self._settings.api_token.reveal()}:{self._settings.api_secret.reveal()}"
        ).encode()
        headers = {
            # aiohttp 3.14 deprecates BasicAuth; the header is built here and nowhere else.
            "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii"),
            "Accept": "application/json",
            "User-Agent": f"harvester/{__version__}",
        }
        connector = _CountingConnector(
            self._stats,
            limit=self._settings.concurrency,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        proxy = self._settings.proxy  # given, or found in the environment (see config)
        if proxy is not None:
            log.info("requests go through the proxy %s", redact_url(proxy))
        self._session = aiohttp.ClientSession(
            headers=headers,
            proxy=proxy,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def events_url(self, call_id: str) -> URL:
        """The events URL of ``call_id``; raises ValueError for an id that is not safe."""
        if not is_call_id(call_id):
            raise ValueError(f"unsafe call id {call_id!r}")
        # A call id is letters, digits and hyphens (is_call_id): nothing in it to quote.
        return self._base.with_path(f"{self._prefix}/calls/{call_id}/events", encoded=True)

    def calls_url(self, page_size: int) -> URL:
        """The first page of the call list, newest first."""
        path = f"{self._prefix}/calls"
        query = {"sortOrder": "desc", "size": str(page_size)}
        return self._base.with_path(path, encoded=True).with_query(query)

    async def calls_page(self, url: URL) -> ListPage:
        """One page of the call list and the next page's URL, exactly as the API linked it."""
        try:
            foreign = url.origin() != self._origin or url.user is not None
        except ValueError:
            foreign = True
        if foreign:
            raise CallFailed(
                None,
                FailureCode.FOREIGN_URL,
                f"{redact_url(clip(str(url), 100))} is not on {self._origin}",
            )
        answer = await self._get_page(url, self._max_body)
        return ListPage(answer.items, answer.next_url, answer.inexact)

    async def events(self, call_id: str) -> list[Event]:
        """All events of one call, following ``Link: rel="next"`` pages and joining them.

        Whatever the server sends, one call ends, in bounded memory: a next link back to a page
        already read, pages together larger than ``max_body_mb``, more than ``max_events``
        events, ``EMPTY_PAGES`` empty pages in a row that link on, or more than ``MAX_PAGES``
        pages fail the call; so does an event that would not be written back as it was sent
        (``harvester.fetch.exactjson``).
        """
        url = self.events_url(call_id)
        answer = await self._get_page(url, self._max_body, call_id)
        events, url_next = answer.items, answer.next_url
        if answer.inexact is not None:
            refuse_inexact(answer.inexact, 0)
        followed: set[str] | None = None
        budget, empty = self._max_body - answer.size, 0
        while url_next is not None:
            if followed is None:
                followed = {str(url)}
            target = str(url_next)
            if target in followed:
                raise CallFailed(
                    200,
                    FailureCode.NEXT_LINK_LOOP,
                    "the next link leads back to a page already read",
                )
            if len(followed) >= MAX_PAGES:
                raise CallFailed(
                    200, FailureCode.TOO_MANY_PAGES, f"more than {MAX_PAGES} pages of events"
                )
            followed.add(target)
            answer = await self._get_page(url_next, budget, call_id)
            if answer.inexact is not None:
                refuse_inexact(answer.inexact, len(events))
            page, url_next = answer.items, answer.next_url
            budget -= answer.size
            events.extend(page)
            self._check_event_count(len(events))
            empty = 0 if page else empty + 1
            if empty >= EMPTY_PAGES and url_next is not None:
                raise CallFailed(
                    200,
                    FailureCode.EMPTY_PAGES,
                    f"{EMPTY_PAGES} pages in a row hold no event yet link on",
                )
        self._check_event_count(len(events))
        return events

    def _check_event_count(self, count: int) -> None:
        if count > self._max_events:
            raise CallFailed(
                200,
                FailureCode.TOO_MANY_EVENTS,
                f"more than {self._max_events} events (max_events; --max-events raises it)",
            )

    async def _get_page(self, url: URL, budget: int, call_id: str | None = None) -> Answer:
        """One answer (at most ``budget`` bytes, on the wire and decompressed) to a request for
        ``call_id``'s events, or for a page of the call list."""
        assert self._session is not None, "use CallEventsClient as an async context manager"
        sent_at = await self._limiter.acquire()
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                status = response.status
                statuses = self._stats.statuses
                statuses[status] = statuses.get(status, 0) + 1
                if status != 429:
                    self._limiter.answered(sent_at)
                if status == 200:
                    length = response.content_length
                    encoded = "Content-Encoding" in response.headers
                    try:
                        if length is not None and length <= budget and not encoded:
                            body = await response.read()  # the usual case: known, allowed length
                        else:
                            body = await self._read_body(response, length, budget)
                    except aiohttp.ClientPayloadError as exc:
                        # Said here, where the answer's head is known: how much of it came.
                        raise body_cut_short(exc, response, length) from exc
                    items, inexact = parse_events(body, response)
                    return Answer(items, self._next_link(response), len(body), inexact)
                body = await read_error_body(response)
                raise self._error_pausing_on_429(status, body, response, call_id, sent_at)
        except ApiError:
            raise
        except Exception as exc:  # aiohttp's, the socket's: said in our words, never theirs
            mapped = self._errors.in_our_words(exc)
            if mapped is None:
                raise  # neither the network's nor the answer's: a bug, which the pool names
            raise mapped from exc

    async def _read_body(
        self, response: aiohttp.ClientResponse, length: int | None, limit: int
    ) -> bytes:
        """The body of a 200 that is compressed, of unknown length or too long: no longer than
        ``limit`` on the wire and decompressed."""
        if length is not None and length > limit:
            raise self._too_large(f"{length} bytes")
        # Read as it comes, and stop at the limit (aiohttp decompresses a bounded amount at a
        # time, so a gzip bomb never gets far).
        chunks = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise self._too_large(f"over {limit} bytes decompressed")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, size: str) -> CallFailed:
        return CallFailed(
            200,
            FailureCode.ANSWER_TOO_LARGE,
            f"the answer is {size}, more than max_body_mb allows for a call's answers together "
            f"({self._max_body} bytes; --max-body-mb raises it)",
        )

    def _next_link(self, response: aiohttp.ClientResponse) -> URL | None:
        if "Link" not in response.headers:  # the usual case; parsing costs more than asking
            return None
        try:
            link = response.links.get("next")
            if link is None:
                return None
            target = response.url.join(URL(str(link["url"]), encoded=True))
            foreign = target.origin() != self._origin
        except (ValueError, TypeError, LookupError) as exc:
            raise CallFailed(
                200, FailureCode.BAD_NEXT_LINK, f"the next link cannot be used ({kind(exc)})"
            ) from exc
        if foreign:
            # Following it would send our credentials to another host.
            raise CallFailed(
                200, FailureCode.FOREIGN_NEXT_LINK, f"next link points off {self._origin}"
            )
        if target.user is not None or target.password is not None:
            raise CallFailed(
                200, FailureCode.BAD_NEXT_LINK, "the next link carries credentials of its own"
            )
        return target

    def _error_pausing_on_429(
        self,
        status: int,
        body: bytes,
        response: aiohttp.ClientResponse,
        call_id: str | None,
        sent_at: float,
    ) -> ApiError:
        """The error a non-200 answer means. A 429 also pauses the whole pool (the limiter)
        until the reset it announces, unless the limiter finds it is ``call_id``'s own; it is
        counted either way. ``sent_at``: when the request left (monotonic clock)."""
        code, message = error_fields(status, body, response)
        if status == 429:
            return self._rate_limited(code, message, response.headers, call_id, sent_at)
        if status in (401, 403):
            return FatalApiError(status, code, message)
        if status == 407:  # our proxy's answer, not the API's: the same for every call
            return self._errors.proxy_refused(407)
        if status in (408, 425) or status >= 500:
            return TransientError(status, code, message)
        if 300 <= status < 400:
            return self._redirected(status, response.headers)
        return CallFailed(status, code, message)

    def _rate_limited(
        self, code: str, message: str, headers: Any, call_id: str | None, sent_at: float
    ) -> RateLimited:
        stats, clock = self._stats, self._clock
        stats.rate_limited += 1
        now = clock.time()
        delay = rate_limit_delay(headers, now, sent=now - (clock.monotonic() - sent_at))
        retry_at = None if delay is None else clock.monotonic() + delay
        asked = f"call {call_id}" if call_id is not None else "a page of the call list"
        cause = f"a 429 for {asked} asked for it ({reset_said(headers, delay)})"
        own = self._limiter.rate_limited(retry_at, call_id, cause)
        if not own and delay is not None:
            stats.paused_until = max(stats.paused_until, clock.time() + delay)
        return RateLimited(429, code, message, retry_at, own=own)

    def _redirected(self, status: int, headers: Any) -> CallFailed:
        """A redirect, which harvester does not follow (it would carry the credentials): the
        base URL most likely wants another scheme or host."""
        location = headers.get("Location")
        where = f" to {clip(redact_url(location), 100)}" if isinstance(location, str) else ""
        return CallFailed(
            status,
            "redirected",
            f"the API answered {status} {phrase(status)}{where}: the base URL probably wants "
            "another scheme or host (--base-url, CATAPULT_BASE_URL); harvester does not follow "
            "redirects, which would carry the credentials elsewhere",
        )


class _CountingConnector(aiohttp.TCPConnector):
    """Counts every request that goes out, aiohttp's own silent resend of an idempotent request
    on a dropped keep-alive connection included: each takes a connection from here. (A trace
    config would do the same at several times the cost per request.)"""

    def __init__(self, stats: RunStats, **options: Any) -> None:
        super().__init__(**options)
        self._stats = stats

    def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        # aiohttp's coroutine itself, not one more wrapped around it: this is every request.
        self._stats.requests += 1
        return super().connect(req, traces, timeout)

"""The API client: one call's events, as one or more HTTP requests.

This is the only module of the harvester that imports aiohttp. Every aiohttp error and every
non-success answer becomes one of ``harvester.errors``' exceptions here, saying whether it is
transient, a rate limit, permanent for the call, or fatal for the run.
"""

from __future__ import annotations

import base64
import email.utils
import math
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from harvester import __version__
from harvester.clock import Clock
from harvester.config import Settings
from harvester.errors import ApiError, CallFailed, FatalApiError, RateLimited, TransientError
from harvester.ids import is_call_id
from harvester.limiter import RateLimiter
from harvester.stats import RunStats

Event = dict[str, Any]

# Guard against a server whose next links go round in circles.
MAX_PAGES = 10_000
# A reset header further away than this is taken as a clock or unit mistake and capped.
MAX_RATE_LIMIT_WAIT = 600.0
# Below this an epoch value in X-RateLimit-Reset is taken as seconds, not milliseconds.
_EPOCH_SECONDS_BELOW = 100_000_000_000


class CallEventsClient:
    """``GET /v1/users/{userId}/calls/{callId}/events``, with Link paging, on one session.

    Use as an async context manager. Every request first takes a turn from the shared
    ``RateLimiter``; a 429 pauses that limiter for the whole pool.
    """

    def __init__(
        self, settings: Settings, limiter: RateLimiter, stats: RunStats, clock: Clock
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._stats = stats
        self._clock = clock
        self._base = URL(settings.base_url.rstrip("/"))
        self._origin = self._base.origin()
        self._prefix = (
            f"{self._base.raw_path.rstrip('/')}/v1/users/{quote(settings.user_id, safe='')}"
        )
        self._session: aiohttp.ClientSession | None = None

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
        self._session = aiohttp.ClientSession(
            headers=headers,
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
        path = f"{self._prefix}/calls/{quote(call_id, safe='')}/events"
        return self._base.with_path(path, encoded=True)

    def calls_url(self, page_size: int) -> URL:
        """The first page of the call list, newest first."""
        path = f"{self._prefix}/calls"
        query = {"sortOrder": "desc", "size": str(page_size)}
        return self._base.with_path(path, encoded=True).with_query(query)

    async def calls_page(self, url: URL) -> tuple[list[Event], URL | None]:
        """One page of the call list and the next page's URL, exactly as the API linked it."""
        if url.origin() != self._origin:
            raise CallFailed(None, "foreign-url", f"{url.origin()} is not {self._origin}")
        return await self._get_page(url)

    async def events(self, call_id: str) -> list[Event]:
        """All events of one call, following ``Link: rel="next"`` pages and joining them."""
        url: URL | None = self.events_url(call_id)
        events: list[Event] = []
        pages = 0
        while url is not None:
            pages += 1
            if pages > MAX_PAGES:
                raise CallFailed(200, "too-many-pages", f"more than {MAX_PAGES} pages of events")
            page, url = await self._get_page(url)
            events.extend(page)
        return events

    async def _get_page(self, url: URL) -> tuple[list[Event], URL | None]:
        assert self._session is not None, "use CallEventsClient as an async context manager"
        sent_at = await self._limiter.acquire()
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                body = await response.read()
                status = response.status
                statuses = self._stats.statuses
                statuses[status] = statuses.get(status, 0) + 1
                if status != 429:
                    self._limiter.answered(sent_at)
                if status == 200:
                    return _parse_events(body, response.content_type), self._next_link(response)
                raise self._error(status, body, response)
        except ApiError:
            raise
        except TimeoutError:
            raise TransientError(
                None, "timeout", f"no complete answer within {self._settings.timeout:g} s"
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise TransientError(None, "truncated-body", _describe(exc)) from None
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise FatalApiError(
                None, "tls-error", f"TLS verification of {self._origin} failed: {_describe(exc)}"
            ) from None
        except aiohttp.ClientError as exc:
            raise TransientError(None, "connection-error", _describe(exc)) from None
        except (ConnectionError, OSError) as exc:
            raise TransientError(None, "connection-error", _describe(exc)) from None

    def _next_link(self, response: aiohttp.ClientResponse) -> URL | None:
        if "Link" not in response.headers:  # the usual case; parsing costs more than asking
            return None
        link = response.links.get("next")
        if link is None:
            return None
        target = response.url.join(URL(str(link["url"]), encoded=True))
        if target.origin() != self._origin:
            # Following it would send our credentials to another host.
            raise CallFailed(200, "foreign-next-link", f"next link points off {self._origin}")
        return target

    def _error(self, status: int, body: bytes, response: aiohttp.ClientResponse) -> ApiError:
        code, message = _error_fields(status, body, response)
        if status == 429:
            self._stats.rate_limited += 1
            retry_at = self._retry_at(response.headers)
            self._limiter.rate_limited(retry_at)
            return RateLimited(status, code, message, retry_at)
        if status in (401, 403):
            return FatalApiError(status, code, message)
        if status in (408, 425) or status >= 500:
            return TransientError(status, code, message)
        return CallFailed(status, code, message)

    def _retry_at(self, headers: Any) -> float | None:
        """Monotonic time at which the API allows requests again, from the 429's headers."""
        delay = rate_limit_delay(headers, self._clock.time())
        if delay is None:
            return None
        return self._clock.monotonic() + delay


def rate_limit_delay(headers: Any, now: float) -> float | None:
    """Seconds to wait after a 429, from ``X-RateLimit-Reset`` (epoch ms, or epoch seconds if
    small) or else ``Retry-After`` (seconds or an HTTP date); None when neither says.

    Kept within 0 and ``MAX_RATE_LIMIT_WAIT`` whatever the server's clock says.
    """
    delay: float | None = None
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            epoch = float(reset)
        except ValueError:
            epoch = math.nan
        if math.isfinite(epoch):
            delay = (epoch if epoch >= _EPOCH_SECONDS_BELOW else epoch * 1000) / 1000 - now
    retry_after = headers.get("Retry-After")
    if delay is None and retry_after is not None:
        delay = _retry_after_seconds(retry_after, now)
    if delay is None:
        return None
    return min(max(delay, 0.0), MAX_RATE_LIMIT_WAIT)


class _CountingConnector(aiohttp.TCPConnector):
    """Counts every request that goes out, aiohttp's own silent resend of an idempotent request
    on a dropped keep-alive connection included: each takes a connection from here. (A trace
    config would do the same at several times the cost per request.)"""

    def __init__(self, stats: RunStats, **options: Any) -> None:
        super().__init__(**options)
        self._stats = stats

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109 (aiohttp's)
        self._stats.requests += 1
        return await super().connect(req, traces, timeout)


def _parse_events(body: bytes, content_type: str) -> list[Event]:
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise TransientError(
            200, "invalid-body", f"answer is not JSON ({content_type}, {len(body)} bytes)"
        ) from None
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise TransientError(200, "invalid-body", "answer is not a JSON array of event objects")
    return events


def _error_fields(status: int, body: bytes, response: aiohttp.ClientResponse) -> tuple[str, str]:
    """Catapult's error ``code`` and ``message``; ours when the body is not Catapult's."""
    reason = response.reason or "error"
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        code = document.get("code") or document.get("category")
        message = document.get("message") or document.get("category") or reason
        if isinstance(code, str) and isinstance(message, str):
            return code, message
    return f"http-{status}", f"{reason} ({response.content_type}, {len(body)} bytes)"


def _retry_after_seconds(value: str, now: float) -> float | None:
    value = value.strip()
    if value.isdigit():
        return float(value)
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - now


def _describe(exc: BaseException) -> str:
    """A short, credential-free description of an aiohttp error."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."

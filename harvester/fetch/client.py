"""The API client: one call's events, as one or more HTTP requests.

This is the only module of the harvester that imports aiohttp. Every aiohttp error and every
non-success answer becomes one of ``harvester.errors``' exceptions here, saying whether it is
transient, a rate limit, permanent for the call, or fatal for the run.
"""

from __future__ import annotations

import base64
import email.utils
import errno
import http
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from aiohttp.http_exceptions import ContentEncodingError, TransferEncodingError
from yarl import URL

from harvester import __version__
from harvester.clock import Clock
from harvester.credentials import Secret, redact_url
from harvester.errors import ApiError, CallFailed, FatalApiError, RateLimited, TransientError
from harvester.fetch.exactjson import Inexact, read_array
from harvester.fetch.limiter import RateLimiter
from harvester.ids import is_call_id
from harvester.settings.config import Settings
from harvester.stats import RunStats

log = logging.getLogger("harvester")

Event = dict[str, Any]

# Pages of one call's events at most (a next link back to a page already read fails at once),
# and pages in a row that hold no event but link on.
MAX_PAGES = 10_000
EMPTY_PAGES = 3
# Of an error answer, this much is read: enough for any error document, never a flood.
ERROR_BODY_LIMIT = 64 * 1024
# What is copied from an answer into the failures file and the log, at most.
MAX_MESSAGE = 300
_SAFE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A reset header further away than this is taken as a clock or unit mistake and capped.
MAX_RATE_LIMIT_WAIT = 600.0
# X-RateLimit-Reset from this on is epoch milliseconds (1973 on); from the next on, below it,
# epoch seconds (2001 to 5138); below both, seconds from now.
_EPOCH_MILLISECONDS_FROM = 100_000_000_000
_EPOCH_SECONDS_FROM = 1_000_000_000


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
        # Through a proxy, what goes wrong on the way may be the proxy's: messages say so.
        proxy = urlsplit(settings.proxy) if settings.proxy else None
        self._proxy_host = proxy.hostname if proxy is not None else None
        self._via = f" (or the proxy {redact_url(settings.proxy or '')})" if proxy else ""

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
                None, "foreign-url", f"{redact_url(clip(str(url), 100))} is not on {self._origin}"
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
            _refuse_inexact(answer.inexact, 0)
        followed: set[str] | None = None
        budget, empty = self._max_body - answer.size, 0
        while url_next is not None:
            if followed is None:
                followed = {str(url)}
            target = str(url_next)
            if target in followed:
                raise CallFailed(
                    200, "next-link-loop", "the next link leads back to a page already read"
                )
            if len(followed) >= MAX_PAGES:
                raise CallFailed(200, "too-many-pages", f"more than {MAX_PAGES} pages of events")
            followed.add(target)
            answer = await self._get_page(url_next, budget, call_id)
            if answer.inexact is not None:
                _refuse_inexact(answer.inexact, len(events))
            page, url_next = answer.items, answer.next_url
            budget -= answer.size
            events.extend(page)
            self._check_event_count(len(events))
            empty = 0 if page else empty + 1
            if empty >= EMPTY_PAGES and url_next is not None:
                raise CallFailed(
                    200, "empty-pages", f"{EMPTY_PAGES} pages in a row hold no event yet link on"
                )
        self._check_event_count(len(events))
        return events

    def _check_event_count(self, count: int) -> None:
        if count > self._max_events:
            raise CallFailed(
                200,
                "too-many-events",
                f"more than {self._max_events} events (max_events; --max-events raises it)",
            )

    async def _get_page(self, url: URL, budget: int, call_id: str | None = None) -> _Answer:
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
                        raise _body_cut_short(exc, response, length) from exc
                    items, inexact = _parse_events(body, response)
                    return _Answer(items, self._next_link(response), len(body), inexact)
                body = await _read_error_body(response)
                raise self._error_pausing_on_429(status, body, response, call_id)
        except ApiError:
            raise
        except Exception as exc:  # aiohttp's, the socket's: said in our words, never theirs
            mapped = self._in_our_words(exc)
            if mapped is None:
                raise  # neither the network's nor the answer's: a bug, which the pool names
            raise mapped from exc

    def _in_our_words(self, exc: Exception) -> ApiError | None:
        """The error an exception met while asking means, in our own words. Never the
        exception's own text: aiohttp's carries the URL it was at, and through a proxy that
        is the proxy's URL, with its user and password."""
        if isinstance(exc, TimeoutError):
            return TransientError(
                None, "timeout", f"no complete answer within {self._settings.timeout:g} s"
            )
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            return self._proxy_refused(exc.status)
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return TransientError(
                None,
                "proxy-unreachable",
                f"cannot connect to the proxy {exc.host}:{exc.port} ({_os_reason(exc)}): check "
                "--proxy or HTTPS_PROXY/HTTP_PROXY",
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            reason = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
            return self._tls_refused(str(reason))
        if isinstance(exc, aiohttp.ClientSSLError):
            return self._tls_refused(_tls_reason(exc))
        return self._connection_in_our_words(exc)

    def _connection_in_our_words(self, exc: Exception) -> ApiError | None:
        """``_in_our_words`` for what is not a timeout, nor the proxy's or TLS's refusal: the
        connection, and an answer that cannot be read."""
        if isinstance(exc, aiohttp.ClientConnectorError) and exc.host == self._proxy_host:
            why = "cannot resolve it" if isinstance(exc, aiohttp.ClientConnectorDNSError) else ""
            return TransientError(
                None,
                "proxy-unreachable",
                f"cannot connect to the proxy {exc.host}:{exc.port} ({why or _os_reason(exc)}): "
                "check --proxy or HTTPS_PROXY/HTTP_PROXY",
            )
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return TransientError(None, "connection-error", f"cannot resolve {exc.host}")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return TransientError(
                None,
                "connection-error",
                f"cannot connect to {exc.host}:{exc.port} ({_os_reason(exc)})",
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return TransientError(
                None,
                "connection-error",
                f"the server{self._via} closed the connection before answering",
            )
        if isinstance(exc, aiohttp.ClientPayloadError):  # an error answer's body, cut short
            return TransientError(
                None, "truncated-body", "the connection closed before the answer was complete"
            )
        if isinstance(exc, aiohttp.InvalidURL):
            return CallFailed(None, "malformed-answer", "the answer leads to a URL that is not one")
        if isinstance(exc, aiohttp.ClientResponseError):
            # The answer's head could not be parsed (oversized or garbled headers, not HTTP).
            return TransientError(
                None,
                "malformed-answer",
                f"the answer's head{self._via} cannot be read (oversized or garbled headers, or "
                "not HTTP)",
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            return TransientError(None, "connection-error", f"connection lost ({_os_reason(exc)})")
        if isinstance(exc, ValueError | LookupError | UnicodeError):
            # Something in the answer that aiohttp or yarl cannot take: it fails this call only.
            return CallFailed(
                None, "malformed-answer", f"the answer holds what cannot be read ({_kind(exc)})"
            )
        return None

    def _proxy_refused(self, status: int) -> ApiError:
        """The proxy answered our CONNECT with ``status`` instead of a tunnel to the API."""
        proxy = redact_url(self._settings.proxy or "the proxy")
        if status == 407:
            return FatalApiError(
                status,
                "proxy-refused",
                f"the proxy {proxy} refused our credentials (407): check the user and password "
                "in --proxy or HTTPS_PROXY/HTTP_PROXY (http://user:password@host:port)",
            )
        return TransientError(
            None,
            "proxy-error",
            f"the proxy {proxy} refused the tunnel to {self._origin} ({status} {_phrase(status)})",
        )

    def _tls_refused(self, reason: str) -> FatalApiError:
        return FatalApiError(
            None, "tls-error", f"TLS verification of {self._origin} failed: {clip(reason, 120)}"
        )

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
            "answer-too-large",
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
                200, "bad-next-link", f"the next link cannot be used ({_kind(exc)})"
            ) from exc
        if foreign:
            # Following it would send our credentials to another host.
            raise CallFailed(200, "foreign-next-link", f"next link points off {self._origin}")
        if target.user is not None or target.password is not None:
            raise CallFailed(200, "bad-next-link", "the next link carries credentials of its own")
        return target

    def _error_pausing_on_429(
        self, status: int, body: bytes, response: aiohttp.ClientResponse, call_id: str | None
    ) -> ApiError:
        """The error a non-200 answer means. A 429 also pauses the whole pool (the limiter)
        until the reset it announces, unless the limiter finds it is ``call_id``'s own; it is
        counted either way."""
        code, message = _error_fields(status, body, response)
        if status == 429:
            return self._rate_limited(code, message, response.headers, call_id)
        if status in (401, 403):
            return FatalApiError(status, code, message)
        if status == 407:  # our proxy's answer, not the API's: the same for every call
            return self._proxy_refused(407)
        if status in (408, 425) or status >= 500:
            return TransientError(status, code, message)
        if 300 <= status < 400:
            return self._redirected(status, response.headers)
        return CallFailed(status, code, message)

    def _rate_limited(
        self, code: str, message: str, headers: Any, call_id: str | None
    ) -> RateLimited:
        stats, clock = self._stats, self._clock
        stats.rate_limited += 1
        delay = rate_limit_delay(headers, clock.time())
        retry_at = None if delay is None else clock.monotonic() + delay
        asked = f"call {call_id}" if call_id is not None else "a page of the call list"
        cause = f"a 429 for {asked} asked for it ({_reset_said(headers, delay)})"
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
            f"the API answered {status} {_phrase(status)}{where}: the base URL probably wants "
            "another scheme or host (--base-url, CATAPULT_BASE_URL); harvester does not follow "
            "redirects, which would carry the credentials elsewhere",
        )


def rate_limit_delay(headers: Any, now: float) -> float | None:
    """Seconds to wait after a 429, from ``X-RateLimit-Reset`` (epoch milliseconds; epoch
    seconds; or, below ``_EPOCH_SECONDS_FROM``, seconds from now) or else ``Retry-After``
    (seconds or an HTTP date), at most ``MAX_RATE_LIMIT_WAIT``.

    None when neither names a moment still to come: absent, unreadable, zero, or already past
    (a server clock behind ours). Such a 429 backs off like a failure: it never means "send
    now".
    """
    for delay in (
        _reset_seconds(headers.get("X-RateLimit-Reset"), now),
        _retry_after_seconds(headers.get("Retry-After"), now),
    ):
        if delay is not None and delay > 0:
            return min(delay, MAX_RATE_LIMIT_WAIT)
    return None


def _reset_seconds(value: object, now: float) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if number >= _EPOCH_MILLISECONDS_FROM:
        return number / 1000 - now
    if number >= _EPOCH_SECONDS_FROM:
        return number - now
    return number  # seconds from now, as the IETF's RateLimit-Reset counts them


def _reset_said(headers: Any, delay: float | None) -> str:
    """What a 429's headers said of its reset, for the log."""
    said = [
        f"{name}: {clip(headers[name], 40)}"
        for name in ("X-RateLimit-Reset", "Retry-After")
        if isinstance(headers.get(name), str)
    ]
    text = ", ".join(said) or "no reset header"
    if delay is not None and delay >= MAX_RATE_LIMIT_WAIT:
        text += f"; waits are capped at {MAX_RATE_LIMIT_WAIT:.0f} s"
    return text


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


class ListPage(NamedTuple):
    """A page of the call list: its records, the next page's URL, and which records would not be
    written back as they were sent (None when all would; see ``harvester.fetch.exactjson``)."""

    records: list[Event]
    next_url: URL | None
    inexact: list[Inexact | None] | None = None


class _Answer(NamedTuple):
    """One 200 answer: its events or records, the next page's URL, its body's size, and which
    of its items would not be written back as sent."""

    items: list[Event]
    next_url: URL | None
    size: int
    inexact: list[Inexact | None] | None


def _parse_events(
    body: bytes, response: aiohttp.ClientResponse
) -> tuple[list[Event], list[Inexact | None] | None]:
    try:
        events, inexact = read_array(body)
    except ValueError as exc:
        content_type = clip(response.content_type, 60)
        raise TransientError(
            200, "invalid-body", f"answer is not JSON ({content_type}, {len(body)} bytes)"
        ) from exc
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise TransientError(200, "invalid-body", "answer is not a JSON array of event objects")
    return events, inexact


def _refuse_inexact(inexact: list[Inexact | None], before: int) -> NoReturn:
    """Fail the call: an event of an answer (after ``before`` events of earlier pages) would
    not be written back as the API sent it."""
    number, wrong = next((n, v) for n, v in enumerate(inexact, before + 1) if v)
    raise CallFailed(
        200,
        wrong.code,
        f"event {number} {wrong.detail}: it cannot be written as the API sent it, so the call "
        "is listed as failed rather than written changed",
    )


def _body_cut_short(
    exc: aiohttp.ClientPayloadError, response: aiohttp.ClientResponse, length: int | None
) -> TransientError:
    """What a 200 whose body did not arrive whole means, in our words: aiohttp's own text names
    its parser's error with a status of its own (``ContentLengthError: 400``), which reads as
    the API's answer; the parser's error is told by its type, its sizes from the answer."""
    cause = exc.__cause__
    encoding = response.headers.get("Content-Encoding")
    if isinstance(cause, ContentEncodingError) and encoding is not None:
        return TransientError(
            200,
            "invalid-body",
            f"the answer's body cannot be decompressed (Content-Encoding: {clip(encoding, 40)})",
        )
    received = _bytes_received(response, encoded=encoding is not None)
    if length is not None and received is not None:
        said = f"the answer ended after {received} of {length} bytes"
    elif isinstance(cause, TransferEncodingError):  # chunked: no length to compare with
        said = "the answer ended before its last chunk"
    else:
        said = "the answer ended early"
    return TransientError(
        None, "truncated-body", f"{said}: the connection closed before it was complete"
    )


def _bytes_received(response: aiohttp.ClientResponse, *, encoded: bool) -> int | None:
    """The bytes of ``response``'s body that came on the wire, as its Content-Length counts
    them; None when that cannot be known (a compressed body, before aiohttp 3.13, is counted
    only decompressed)."""
    content = response.content
    raw = getattr(content, "total_raw_bytes", None)  # aiohttp 3.13 on: the bytes on the wire
    if isinstance(raw, int):
        return raw
    return None if encoded else content.total_bytes


def _error_fields(status: int, body: bytes, response: aiohttp.ClientResponse) -> tuple[str, str]:
    """Catapult's error ``code`` and ``message``; ours when the body is not Catapult's.

    Both are clipped: a code is a short token or ``http-<status>``, a message at most
    ``MAX_MESSAGE`` printable characters, whatever the server sent.
    """
    reason = clip(response.reason or "error")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        code = document.get("code") or document.get("category")
        message = document.get("message") or document.get("category") or reason
        if isinstance(code, str) and isinstance(message, str):
            if not _SAFE_CODE.fullmatch(code):
                code = f"http-{status}"
            return code, clip(message)
    return f"http-{status}", f"{reason} ({clip(response.content_type, 60)}, {len(body)} bytes)"


async def _read_error_body(response: aiohttp.ClientResponse) -> bytes:
    """At most ``ERROR_BODY_LIMIT`` bytes of an error answer: its code and message, no more."""
    chunks = []
    size = 0
    while size < ERROR_BODY_LIMIT:
        chunk = await response.content.read(ERROR_BODY_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` for a log line or the failures file: printable, at most ``limit`` characters."""
    text = text[: limit + 1]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after_seconds(value: object, now: float) -> float | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not str.isdigit alone: "²" is a digit to it
        return float(value)
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        return when.timestamp() - now
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _os_reason(exc: BaseException) -> str:
    """Why a connection failed, in the system's words for its error number (never an
    exception's text)."""
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number in errno.errorcode:
        return os.strerror(number).lower()
    return _kind(exc)


def _tls_reason(exc: aiohttp.ClientSSLError) -> str:
    """Why TLS failed, as OpenSSL names it (``WRONG_VERSION_NUMBER``), never a message."""
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    reason = getattr(cause, "reason", None)
    return reason if isinstance(reason, str) and reason.isprintable() else "handshake failed"


def _kind(exc: BaseException) -> str:
    """What an exception is, by its type's name: its text is not ours to print."""
    return type(exc).__name__


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "unknown status"

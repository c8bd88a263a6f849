"""The client's error map: what aiohttp and the socket raise while asking, said in our words as
one of ``harvester.errors``' exceptions, never in the library's own text."""

from __future__ import annotations

import errno
import http
import os
from urllib.parse import urlsplit

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError, TransferEncodingError
from yarl import URL

from harvester.credentials import redact_url
from harvester.errors import ApiError, CallFailed, FailureCode, FatalApiError, TransientError
from harvester.logs import clip


class ErrorMap:
    """The errors of one client's requests: to ``origin``, within ``timeout`` seconds, through
    ``proxy`` if one is given."""

    def __init__(self, timeout: float, origin: URL, proxy: str | None) -> None:
        self._timeout = timeout
        self._origin = origin
        self._proxy = proxy
        # Through a proxy, what goes wrong on the way may be the proxy's: messages say so.
        parts = urlsplit(proxy) if proxy else None
        self._proxy_host = parts.hostname if parts is not None else None
        self._via = f" (or the proxy {redact_url(proxy or '')})" if parts else ""

    def in_our_words(self, exc: Exception) -> ApiError | None:
        """The error an exception met while asking means, in our own words. Never the
        exception's own text: aiohttp's carries the URL it was at, and through a proxy that
        is the proxy's URL, with its user and password."""
        if isinstance(exc, TimeoutError):
            return TransientError(
                None, FailureCode.TIMEOUT, f"no complete answer within {self._timeout:g} s"
            )
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            return self.proxy_refused(exc.status)
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return TransientError(
                None,
                FailureCode.PROXY_UNREACHABLE,
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
        """``in_our_words`` for what is not a timeout, nor the proxy's or TLS's refusal: the
        connection, and an answer that cannot be read."""
        if isinstance(exc, aiohttp.ClientConnectorError) and exc.host == self._proxy_host:
            why = "cannot resolve it" if isinstance(exc, aiohttp.ClientConnectorDNSError) else ""
            return TransientError(
                None,
                FailureCode.PROXY_UNREACHABLE,
                f"cannot connect to the proxy {exc.host}:{exc.port} ({why or _os_reason(exc)}): "
                "check --proxy or HTTPS_PROXY/HTTP_PROXY",
            )
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return TransientError(None, FailureCode.CONNECTION_ERROR, f"cannot resolve {exc.host}")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return TransientError(
                None,
                FailureCode.CONNECTION_ERROR,
                f"cannot connect to {exc.host}:{exc.port} ({_os_reason(exc)})",
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return TransientError(
                None,
                FailureCode.CONNECTION_ERROR,
                f"the server{self._via} closed the connection before answering",
            )
        if isinstance(exc, aiohttp.ClientPayloadError):  # an error answer's body, cut short
            return TransientError(
                None,
                FailureCode.TRUNCATED_BODY,
                "the connection closed before the answer was complete",
            )
        if isinstance(exc, aiohttp.InvalidURL):
            return CallFailed(
                None, FailureCode.MALFORMED_ANSWER, "the answer leads to a URL that is not one"
            )
        if isinstance(exc, aiohttp.ClientResponseError):
            # The answer's head could not be parsed (oversized or garbled headers, not HTTP).
            return TransientError(
                None,
                FailureCode.MALFORMED_ANSWER,
                f"the answer's head{self._via} cannot be read (oversized or garbled headers, or "
                "not HTTP)",
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            return TransientError(
                None, FailureCode.CONNECTION_ERROR, f"connection lost ({_os_reason(exc)})"
            )
        if isinstance(exc, ValueError | LookupError | UnicodeError):
            # Something in the answer that aiohttp or yarl cannot take: it fails this call only.
            return CallFailed(
                None,
                FailureCode.MALFORMED_ANSWER,
                f"the answer holds what cannot be read ({kind(exc)})",
            )
        return None

    def proxy_refused(self, status: int) -> ApiError:
        """The proxy answered our CONNECT with ``status`` instead of a tunnel to the API."""
        proxy = redact_url(self._proxy or "the proxy")
        if status == 407:
            return FatalApiError(
                status,
                FailureCode.PROXY_REFUSED,
                f"the proxy {proxy} refused our credentials (407): check the user and password "
                "in --proxy or HTTPS_PROXY/HTTP_PROXY (http://user:password@host:port)",
            )
        return TransientError(
            None,
            FailureCode.PROXY_ERROR,
            f"the proxy {proxy} refused the tunnel to {self._origin} ({status} {phrase(status)})",
        )

    def _tls_refused(self, reason: str) -> FatalApiError:
        return FatalApiError(
            None,
            FailureCode.TLS_ERROR,
            f"TLS verification of {self._origin} failed: {clip(reason, 120)}",
        )


def body_cut_short(
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
            FailureCode.INVALID_BODY,
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
        None, FailureCode.TRUNCATED_BODY, f"{said}: the connection closed before it was complete"
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


def _os_reason(exc: BaseException) -> str:
    """Why a connection failed, in the system's words for its error number (never an
    exception's text)."""
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number in errno.errorcode:
        return os.strerror(number).lower()
    return kind(exc)


def _tls_reason(exc: aiohttp.ClientSSLError) -> str:
    """Why TLS failed, as OpenSSL names it (``WRONG_VERSION_NUMBER``), never a message."""
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    reason = getattr(cause, "reason", None)
    return reason if isinstance(reason, str) and reason.isprintable() else "handshake failed"


def kind(exc: BaseException) -> str:
    """What an exception is, by its type's name: its text is not ours to print."""
    return type(exc).__name__


def phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "unknown status"

"""The one exception tree of harvester.

::

    HarvesterError
    ├── ConfigError        bad settings or flags: exit 2, nothing fetched
    ├── AlreadyRunning     another harvester runs this job now: exit 75, nothing touched
    ├── InputError         the call list cannot be read: exit 2
    ├── Stopping           the run is stopping: a request not yet sent is not sent
    ├── OutputError        an output file cannot be written (disk full, permissions): exit 4
    │   └── OutputChanged  something else changed it under the run: exit 4, then refused
    └── ApiError           one answer (or non-answer) of the API, with status/code/message
        ├── TransientError     worth another attempt: 5xx, resets, timeouts, garbled bodies
        │   └── RateLimited    429: wait until ``retry_at`` (clock seconds) or back off
        ├── CallFailed         permanent for this call (404, other 4xx, a malformed or
        │                      oversized answer, a next link that loops): to the failures file
        └── FatalApiError      permanent for the whole run (401, 403, TLS refused, a base
                               URL with no call list, a call list that cannot be read
                               whole): abort, exit 3
            └── ApiUnavailable the API is down (an outage, a wrong base URL): exit 6;
                               nothing is lost, the next run takes the calls on

aiohttp's own exceptions are mapped onto these in exactly one place, ``harvester.fetch.errormap``;
nothing outside ``harvester.fetch`` imports aiohttp (but the simulator, which is a server).
"""

from __future__ import annotations

import enum

from harvester.exits import Status


class FailureCode(enum.StrEnum):
    """Why a request or a call failed, in harvester's words: the ``code`` of an ``ApiError``
    and of a line of the failures file. A call the API refused carries the API's own code
    instead (Catapult's ``code``, such as ``call-not-found``, or ``http-<status>``): that set is
    open, so codes travel as ``str``, and these are the ones harvester itself gives."""

    # The input line.
    INVALID_INPUT = "invalid-input"  # a line that names no call
    INVALID_CALL_ID = "invalid-call-id"  # not a call id: never sent
    # No answer, or one cut short.
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection-error"
    TRUNCATED_BODY = "truncated-body"
    TLS_ERROR = "tls-error"
    PROXY_UNREACHABLE = "proxy-unreachable"
    PROXY_REFUSED = "proxy-refused"
    PROXY_ERROR = "proxy-error"
    # An answer that is no list of events, or one that cannot be written back as sent.
    INVALID_BODY = "invalid-body"
    MALFORMED_ANSWER = "malformed-answer"
    INEXACT_NUMBER = "inexact-number"
    DUPLICATE_KEY = "duplicate-key"
    ANSWER_TOO_LARGE = "answer-too-large"
    TOO_MANY_EVENTS = "too-many-events"
    # Paging.
    TOO_MANY_PAGES = "too-many-pages"
    EMPTY_PAGES = "empty-pages"
    NEXT_LINK_LOOP = "next-link-loop"
    BAD_NEXT_LINK = "bad-next-link"
    FOREIGN_NEXT_LINK = "foreign-next-link"
    FOREIGN_URL = "foreign-url"
    # 429s.
    CALL_RATE_LIMITED = "call-rate-limited"  # this call's own, past what retrying allows
    # The run as a whole (``FatalApiError``).
    API_UNAVAILABLE = "api-unavailable"
    WRONG_BASE_URL = "wrong-base-url"
    LISTING_FAILED = "listing-failed"
    LISTING_LOOP = "listing-loop"
    # What nobody foresaw (a bug): the call fails, never the run.
    UNEXPECTED_ERROR = "unexpected-error"
    # A failure whose line was lost with a damaged failures file, rebuilt from the ledger.
    REASON_LOST = "reason-lost"


class HarvesterError(Exception):
    """Base of every error harvester raises on purpose."""


class ConfigError(HarvesterError):
    """The settings are invalid; the message says how to fix them."""


class AlreadyRunning(HarvesterError):
    """Another harvester is running this job (or a night of it) now: this run is turned away
    before it touches anything, and the other goes on unharmed."""

    def __init__(self, message: str, pid: str) -> None:
        super().__init__(message)
        self.pid = pid


class Stopping(HarvesterError):
    """The run is stopping (a signal, the deadline) and this request was not sent yet: its
    call is left for the next run, not failed."""


class InputError(HarvesterError):
    """The call list cannot be opened or parsed at all."""


class OutputError(HarvesterError):
    """An output file could not be written; nothing past the last good write is claimed."""


class OutputChanged(OutputError):
    """Something else changed an output file while harvester wrote it (cut, removed, replaced,
    written into): the run stops, and the job is refused until the file is what was committed.
    ``what`` says what happened to it, in a few words."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


class ApiError(HarvesterError):
    """An API answer that is not a list of events.

    ``status`` is the HTTP status, or None when no answer arrived (reset, timeout).
    ``code`` is Catapult's error code (``call-not-found``) or one of ours (``FailureCode``).
    """

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = str(code)  # a plain str: the key of counters written as JSON
        self.message = message
        self.attempts = 0


class TransientError(ApiError):
    """Worth retrying: the same request may well succeed later."""


class RateLimited(TransientError):
    """429. ``retry_at`` is the monotonic clock time the API allows requests again, if it said;
    ``own`` says the 429 was judged the call's own, not the account's limit (nothing was learnt
    from it, and the pool waited for it only when its reset was near)."""

    def __init__(
        self, status: int, code: str, message: str, retry_at: float | None, *, own: bool = False
    ) -> None:
        super().__init__(status, code, message)
        self.retry_at = retry_at
        self.own = own


class CallFailed(ApiError):
    """Permanent for this call: retrying will not help (unknown call, other 4xx)."""


class FatalApiError(ApiError):
    """Permanent for the whole run: credentials refused or no access (401/403), TLS refused, a
    base URL with no call list for the user (``wrong-base-url``), a call list that cannot be
    read whole (``listing-failed``, ``listing-loop``). The run stops, exit 3."""


class ApiUnavailable(FatalApiError):
    """The API cannot be reached or keeps failing for calls that work: the run stops, and the
    calls it could not do are left for the next run (not listed as failed)."""


def status_of(error: BaseException) -> Status:
    """How a run that raised ``error`` ended, as the summary and ``harvester status`` say."""
    for kind, status in (
        (AlreadyRunning, Status.ALREADY_RUNNING),
        (ApiUnavailable, Status.API_UNAVAILABLE),
        (FatalApiError, Status.ABORTED),
        (OutputError, Status.OUTPUT_ERROR),
        (ConfigError, Status.USAGE_ERROR),
        (InputError, Status.USAGE_ERROR),
    ):
        if isinstance(error, kind):
            return status
    return Status.CRASHED

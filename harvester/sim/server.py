"""A faithful stand-in for the Catapult v1 API, for the demo, the tests and the benchmarks.

It serves

- ``GET /v1/users/{userId}/calls/{callId}/events``: the events of a call, deterministic per
  call id, in pages joined by ``Link: <…>; rel="next"`` when ``events_page_size`` is set;
- ``GET /v1/users/{userId}/calls``: the call registry, ``sortOrder`` and ``size`` honoured,
  paged with ``Link`` headers (``rel="first"``, ``"next"``, ``"previous"``);

with basic auth, Catapult-shaped error bodies, a fixed-window rate limit answered with 429 and
``X-RateLimit-Reset`` (epoch milliseconds), latency, and injectable faults. Every request's raw
path is kept in ``requests`` so tests can check exactly what a client sent.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import math
import random
import ssl
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import orjson
from aiohttp import web
from yarl import URL

from harvester.ids import is_call_id

SIM_USER_ID = "u-simulatoruserid0000000"
SIM_TOKEN = "t-simulator-token"  # noqa: S105 (the simulator's own, public)
SIM_SECRET = "simulator-secret-do-not-log"  # noqa: S105

FAULT_KINDS = (
    "500",  # JSON error body, category server-error
    "502",  # a proxy's HTML error page
    "503",  # Catapult's "unavailable"
    "504",  # a proxy's gateway timeout, JSON
    "reset",  # connection closed before any answer
    "truncate",  # 200 whose body stops short of its Content-Length
    "html",  # 200 with a proxy's HTML page instead of JSON
    "slow",  # an answer slower than any sane client timeout
    "429",  # rate-limit answer with X-RateLimit-Reset
    "429-retry-after",  # rate-limit answer with Retry-After only
    "429-bare",  # rate-limit answer with neither header
)

_EVENT_SCRIPT = (
    ("create", None),
    ("answer", None),
    ("CHANNEL_EXECUTE", '{"applicationName":"park"}'),
    ("CHANNEL_EXECUTE", '{"applicationName":"playback","applicationData":"test.mp3"}'),
    ("playback", "start"),
    ("playback", "done"),
    ("speak", ""),
    ("gather", '{"digits":"1234","reason":"max-digits"}'),
    ("CHANNEL_EXECUTE_COMPLETE", '{"applicationName":"playback"}'),
    ("dtmf", "5"),
)
_EPOCH = datetime(2026, 11, 26, tzinfo=UTC)


@dataclass
class SimConfig:
    """What the simulator does. Mutable: tests change it between runs."""

    user_id: str = SIM_USER_ID
    token: str = SIM_TOKEN
    secret: str = SIM_SECRET
    calls: int = 1000
    # The registry's calls start over the `days` before `anchor` (default: today, 00:00 UTC).
    days: float = 3.0
    anchor: datetime = field(
        default_factory=lambda: datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    )
    # Next links of the call list: page numbers (the API's) or opaque cursors (its successor's).
    list_cursor: bool = False
    seed: int = 7
    # Any well-formed id has events, not only the registry's (for big benchmark inputs).
    open_world: bool = False
    events_page_size: int = 0
    # Where next links point (scheme://host:port); None: the simulator itself.
    next_link_origin: str | None = None
    # Requests allowed per window (0: no limit). The limit's shape: "fixed" windows aligned to
    # the epoch (Catapult's), a "sliding" window, or a token "bucket" of `burst` tokens (default
    # rate_limit) refilled at rate_limit per window. `limit_schedule`: seconds from the first
    # request -> the limit from then on.
    rate_limit: int = 0
    window: float = 1.0
    limit_kind: str = "fixed"
    burst: int = 0
    limit_schedule: dict[float, int] = field(default_factory=dict)
    latency: float = 0.0
    # Seconds from deciding an answer to sending it: the answer's way back, on the simulator's
    # clock. A reset a few milliseconds ahead (a token bucket's next token) is past on arrival.
    return_latency: float = 0.0
    slow_seconds: float = 30.0
    # Fault kind -> probability per request; a call sees at most max_faults_per_call in a row.
    # (The events endpoint always; the call list when faults_on_list.)
    faults: dict[str, float] = field(default_factory=dict)
    max_faults_per_call: int = 2
    # Faults come only between these seconds from the first request; an injected 429 announces
    # a reset this many seconds ahead (0 or less: one already past, as a server clock behind).
    faults_from: float = 0.0
    faults_until: float = math.inf
    fault_reset: float = 0.5
    # The call list misbehaves too (a page counts as a call for max_faults_per_call).
    faults_on_list: bool = False


@dataclass
class Exchange:
    """One request as the simulator saw it: arrival time (its clock), raw path, answer status."""

    time: float
    path: str
    status: int | None = None


def call_id_for(seed: int, index: int) -> str:
    """The ``index``-th call id of the registry: ``c-`` + 23 base32 characters, like Catapult's."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return "c-" + base64.b32encode(digest).decode("ascii").lower()[:23]


def events_for(call_id: str) -> list[dict[str, Any]]:
    """The events of a call: the same for the same id, every time, in every process."""
    return [dict(event) for event in _events(call_id)]


@functools.lru_cache(maxsize=4096)  # made once per call: the answer, and a test's check
def _events(call_id: str) -> tuple[dict[str, Any], ...]:
    rng = random.Random(hashlib.sha256(call_id.encode()).digest())
    start = _EPOCH - timedelta(seconds=rng.randrange(3 * 86400))
    count = rng.randrange(2, 12)
    events: list[dict[str, Any]] = []
    for number in range(count):
        name, data = _EVENT_SCRIPT[number] if number < len(_EVENT_SCRIPT) else ("hangup", None)
        if number == count - 1:
            name, data = "hangup", "NORMAL_CLEARING"
        moment = start + timedelta(milliseconds=rng.randrange(200, 9000) * (number + 1))
        event: dict[str, Any] = {"name": name}
        if rng.random() < 0.9:
            event = {"id": f"ce-{call_id[2:]}-{number:03d}", **event}
        # Mostly ISO-8601 with milliseconds, sometimes epoch milliseconds as the API also does.
        if rng.random() < 0.15:
            event["time"] = int(moment.timestamp() * 1000)
        else:
            event["time"] = (
                moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
            )
        if data is not None:
            event["data"] = data
        events.append(event)
    rng.shuffle(events)  # the API does not promise time order
    return tuple(events)


def _call_record(config: SimConfig, index: int, call_id: str, base: str) -> dict[str, Any]:
    key = (config.seed, config.days, config.calls, config.anchor, config.user_id)
    return dict(_record(*key, index, call_id, base))


@functools.lru_cache(maxsize=4096)
def _record(
    seed: int,
    days: float,
    calls: int,
    anchor: datetime,
    user_id: str,
    index: int,
    call_id: str,
    base: str,
) -> dict[str, Any]:
    rng = random.Random(f"{seed}:{call_id}")
    span = days * 86400
    # Newest first: index 0 is the most recent call.
    start = anchor - timedelta(seconds=span * (index + 0.5) / max(calls, 1))
    duration = rng.randrange(0, 900)
    state = rng.choice(("completed", "completed", "completed", "rejected", "error"))
    record: dict[str, Any] = {
        "id": call_id,
        "direction": rng.choice(("in", "out")),
        "from": f"+1919{rng.randrange(10**6, 10**7)}",
        "to": f"+1704{rng.randrange(10**6, 10**7)}",
        "state": state,
        "startTime": _iso(start),
        "events": f"{base}/v1/users/{user_id}/calls/{call_id}/events",
    }
    if state == "completed":
        record["activeTime"] = _iso(start + timedelta(seconds=3))
        record["endTime"] = _iso(start + timedelta(seconds=3 + duration))
        record["chargeableDuration"] = math.ceil(duration / 60) * 60
    return record


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Simulator:
    """The simulated API. ``await start()`` serves it on loopback; ``base_url`` says where."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Any = None,
    ) -> None:
        self.config = config or SimConfig()
        # Only the rate-limit windows and the way back use the (injectable) clock; latency is
        # real time.
        self._time = clock.time if clock is not None else time.time
        self._sleep = clock.sleep if clock is not None else asyncio.sleep
        self.log: list[Exchange] = []
        self.statuses: Counter[int | str] = Counter()
        self._window_start = 0.0
        self._window_count = 0
        self._began: float | None = None  # the first request's time
        self._admitted: deque[float] = deque()  # a sliding window's requests
        self._tokens: float | None = None  # a bucket's
        self._tokens_at = 0.0
        self._fault_streak: Counter[str] = Counter()
        self._rng = random.Random(self.config.seed)
        self._registry_key: tuple[int, int] | None = None
        self._registry: list[str] = []
        self._known: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- registry ----------------------------------------------------------------------------
    def call_ids(self) -> list[str]:
        """The registry's call ids, newest first."""
        key = (self.config.seed, self.config.calls)
        if key != self._registry_key:
            self._registry = [call_id_for(self.config.seed, i) for i in range(self.config.calls)]
            self._known = set(self._registry)
            self._registry_key = key
        return self._registry

    def call_records(self) -> list[dict[str, Any]]:
        """The registry's call records as the call list serves them, newest first."""
        ids = self.call_ids()
        return [
            _call_record(self.config, i, call_id, self.base_url) for i, call_id in enumerate(ids)
        ]

    def calls_between(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """The registry's call records whose start is in ``[since, until)``, newest first."""
        return [
            record
            for record in self.call_records()
            if since <= datetime.fromisoformat(record["startTime"]) < until
        ]

    def knows(self, call_id: str) -> bool:
        """True when the events endpoint answers 200 for ``call_id``."""
        self.call_ids()
        return call_id in self._known or (self.config.open_world and is_call_id(call_id))

    # -- serving -----------------------------------------------------------------------------
    @property
    def requests(self) -> list[str]:
        """The raw path (with query) of every request received, in order of arrival."""
        return [exchange.path for exchange in self.log]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/_sim/log":
            answer: web.StreamResponse = await handler(request)
            return answer
        exchange = Exchange(self._time(), request.raw_path)
        self.log.append(exchange)
        response: web.StreamResponse = await handler(request)
        exchange.status = response.status
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v1/users/{user}/calls/{call}/events", self._events)
        app.router.add_get("/v1/users/{user}/calls", self._list_calls)
        app.router.add_get("/_sim/log", self._log)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on ``host:port`` (0: a free port), over TLS if given; returns the base URL."""
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        server: Any = site._server
        bound_port = server.sockets[0].getsockname()[1]
        self.base_url = f"{'https' if ssl_context else 'http'}://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- handlers ----------------------------------------------------------------------------
    async def _events(self, request: web.Request) -> web.StreamResponse:
        early = await self._admit(request)
        if early is not None:
            return early
        call_id = request.match_info["call"]
        if not self.knows(call_id):
            return self._answer(
                404,
                {
                    "category": "not-found",
                    "code": "call-not-found",
                    "message": f"The call '{call_id}' could not be found",
                    "details": [{"name": "requestMethod", "value": "GET"}],
                },
            )
        events = events_for(call_id)
        size = self.config.events_page_size
        headers: dict[str, str] = {}
        if size:
            offset = _decode_cursor(request.query.get("cursor"))
            page, events = events[offset : offset + size], events
            if offset + size < len(events):
                cursor = _encode_cursor(offset + size)
                target = request.url.with_query(cursor=cursor)
                if self.config.next_link_origin:
                    target = URL(self.config.next_link_origin).join(target.relative())
                headers["Link"] = f'<{target}>; rel="next"'
            events = page
        fault = self._pick_fault(call_id)
        if fault is not None:
            return await self._fault(request, fault, orjson.dumps(events), headers)
        self._fault_streak.pop(call_id, None)
        return self._answer(200, events, headers)

    async def _list_calls(self, request: web.Request) -> web.StreamResponse:
        early = await self._admit(request)
        if early is not None:
            return early
        try:
            size = int(request.query.get("size", "25"))
            cursor = request.query.get("cursor")
            page = _decode_cursor(cursor) if cursor else int(request.query.get("page", "0"))
        except ValueError:
            return self._answer(
                400,
                {
                    "category": "bad-request",
                    "code": "invalid-parameter",
                    "message": "size and page must be numbers",
                },
            )
        if not 1 <= size <= 1000 or page < 0:
            return self._answer(
                400,
                {
                    "category": "bad-request",
                    "code": "invalid-parameter",
                    "message": "size must be 1 to 1000",
                },
            )
        order = request.query.get("sortOrder", "desc")
        ids = self.call_ids()
        indices = range(len(ids)) if order == "desc" else range(len(ids) - 1, -1, -1)
        chosen = indices[page * size : (page + 1) * size]
        base = str(request.url.origin())
        records = [_call_record(self.config, i, ids[i], base) for i in chosen]

        def link(to: int) -> str:
            if self.config.list_cursor:
                query = {k: v for k, v in request.url.query.items() if k not in ("page", "cursor")}
                return str(request.url.with_query({**query, "cursor": _encode_cursor(to)}))
            return str(request.url.update_query(page=to))

        links = [f'<{link(0)}>; rel="first"']
        if page > 0:
            links.append(f'<{link(page - 1)}>; rel="previous"')
        if (page + 1) * size < len(ids):
            links.append(f'<{link(page + 1)}>; rel="next"')
        fault = self._pick_fault(request.path_qs) if self.config.faults_on_list else None
        if fault is not None:
            return await self._fault(
                request, fault, orjson.dumps(records), {"Link": ", ".join(links)}
            )
        self._fault_streak.pop(request.path_qs, None)
        return self._answer(200, records, {"Link": ", ".join(links)})

    async def _log(self, request: web.Request) -> web.StreamResponse:
        """Every exchange so far as [time, status, path], for benchmarks in another process."""
        return web.Response(
            body=orjson.dumps([[e.time, e.status, e.path] for e in self.log]),
            content_type="application/json",
        )

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return self._answer(
            404,
            {
                "category": "not-found",
                "code": "resource-not-found",
                "message": "The resource could not be found",
            },
        )

    async def _admit(self, request: web.Request) -> web.StreamResponse | None:
        """Log, delay, authenticate and rate-limit a request; an answer means stop there."""
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        expected = base64.b64encode(f"{self.config.token}:{self.config.secret}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return self._answer(
                401,
                {
                    "category": "unauthorized",
                    "code": "user-access-denied",
                    "message": "The credentials are not valid",
                },
            )
        if request.match_info["user"] != self.config.user_id:
            return self._answer(
                403,
                {
                    "category": "forbidden",
                    "code": "forbidden",
                    "message": "Access to this user is not allowed",
                },
            )
        reset = self._limit(self._time())
        if self.config.return_latency:
            await self._sleep(self.config.return_latency)
        return None if reset is None else self._rate_limited(reset, "reset")

    def elapsed(self, now: float) -> float:
        """Seconds since the first request (the origin of schedules and fault spans)."""
        if self._began is None:
            self._began = now
        return now - self._began

    def _limit(self, now: float) -> float | None:
        """None when the limit admits a request now; else the reset it announces."""
        config = self.config
        elapsed = self.elapsed(now)
        for when in sorted(config.limit_schedule):
            if elapsed >= when:
                config.rate_limit = config.limit_schedule.pop(when)
        limit, window = config.rate_limit, config.window
        if not limit:
            return None
        if config.limit_kind == "sliding":
            admitted = self._admitted
            while admitted and admitted[0] <= now - window:
                admitted.popleft()
            if len(admitted) >= limit:
                return admitted[0] + window
            admitted.append(now)
            return None
        if config.limit_kind == "bucket":
            capacity, refill = config.burst or limit, limit / window
            tokens = capacity if self._tokens is None else self._tokens
            tokens = min(capacity, tokens + (now - self._tokens_at) * refill)
            self._tokens_at = now
            if tokens < 1:
                self._tokens = tokens
                return now + (1 - tokens) / refill
            self._tokens = tokens - 1
            return None
        window_start = math.floor(now / window) * window
        if window_start != self._window_start:
            self._window_start, self._window_count = window_start, 0
        if self._window_count >= limit:
            return window_start + window
        self._window_count += 1
        return None

    def _rate_limited(self, reset: float, style: str) -> web.Response:
        reset_ms = str(math.ceil(reset * 1000))
        headers = {}
        if style == "reset":
            headers["X-RateLimit-Reset"] = reset_ms
        elif style == "retry-after":
            headers["Retry-After"] = str(max(0, math.ceil(reset - self._time())))
        body = {
            "category": "too-many-requests",
            "code": "rate-limit-reached",
            "message": "You have exceeded the rate limit",
            "details": [{"name": "rateLimitResetTime", "value": reset_ms}],
        }
        return self._answer(429, body, headers)

    def _pick_fault(self, call_id: str) -> str | None:
        config = self.config
        faults = config.faults
        if not faults or self._fault_streak[call_id] >= config.max_faults_per_call:
            return None
        if not config.faults_from <= self.elapsed(self._time()) < config.faults_until:
            return None
        roll = self._rng.random()
        for kind, probability in faults.items():
            if roll < probability:
                self._fault_streak[call_id] += 1
                return kind
            roll -= probability
        return None

    async def _fault(
        self, request: web.Request, kind: str, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Misbehave as ``kind`` says, instead of answering 200 with ``body`` and ``headers``
        (a slow answer is that answer, late)."""
        self.statuses[kind] += 1
        if kind in _ERROR_BODIES:
            return self._answer(int(kind), _ERROR_BODIES[kind], count=False)
        if kind == "502":
            return self._html(502, count=False)
        if kind == "html":
            return self._html(200, count=False)
        if kind == "slow":
            await asyncio.sleep(self.config.slow_seconds)
            return web.Response(body=body, content_type="application/json", headers=headers)
        if kind.startswith("429"):
            style = {"429": "reset", "429-retry-after": "retry-after"}.get(kind, "bare")
            return self._rate_limited(self._time() + self.config.fault_reset, style)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if kind == "truncate":
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close() if kind == "truncate" else request.transport.abort()
        return response

    def _html(self, status: int, *, count: bool = True) -> web.Response:
        if count:
            self.statuses[status] += 1
        page = "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
        return web.Response(status=status, text=page, content_type="text/html")

    def _answer(
        self, status: int, body: Any, headers: dict[str, str] | None = None, *, count: bool = True
    ) -> web.Response:
        if count:
            self.statuses[status] += 1
        return web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=headers,
        )


# Catapult-shaped bodies of the injected server errors.
_ERROR_BODIES: dict[str, dict[str, str]] = {
    "500": {
        "category": "server-error",
        "code": "internal-error",
        "message": "An internal error occurred",
    },
    "503": {
        "category": "unavailable",
        "code": "unavailable",
        "message": "Service unavailable, retry your operation later",
    },
    "504": {"category": "gateway-timeout", "code": "gateway-timeout", "message": "Gateway timeout"},
}


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    """The offset in an opaque cursor; ValueError for one that is not ours."""
    if not cursor:
        return 0
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        return int(base64.urlsafe_b64decode(padded).decode().split(":")[1])
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"bad cursor {cursor!r}") from exc

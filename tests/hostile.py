"""A small hostile stand-in for the API: good calls answered as the simulator would, and calls
whose id names a poison answered with it (``c-poison-<kind>-<n>``).

It serves the events endpoint and a call list whose next link is itself. Run it in-process
(``async with Hostile() as api``) or as a process (``python -m tests.hostile PORT_FILE``), for
tests that measure a harvester process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import struct
import sys
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from harvester.sim.server import events_for

EVENTS = "/v1/users/{user}/calls/{call}/events"
# A good call whose events a hostile answer claims as its own.
GOOD_VICTIM = "c-victim0000000000000001"

# What each poison does, and the failure code it must end in (None: the call is harvested).
POISONS: dict[str, str | None] = {
    "retry-after-superscript": None,  # one 429 with Retry-After: ², then the events
    "reset-garbage": None,  # one 429 with X-RateLimit-Reset: 1e999, then the events
    "link-port": "bad-next-link",  # Link to port 999999
    "link-ipv6": "bad-next-link",  # Link: <http://[zz/x>
    "link-userinfo": "bad-next-link",  # a same-origin next link carrying user:pw@
    "link-self": "next-link-loop",  # a next link to the page itself
    "link-cycle": "next-link-loop",  # page 1 -> page 2 -> page 1
    "link-foreign": "foreign-next-link",
    "endless-pages": "too-many-events",  # new pages of events for ever
    "big-pages": "answer-too-large",  # new pages of one 1 MB event each, for ever
    "empty-pages": "empty-pages",  # new empty pages for ever
    "many-events": "too-many-events",  # one page of 500,000 tiny events
    "too-long": "answer-too-large",  # Content-Length far over the limit
    "endless": "answer-too-large",  # a chunked body that never ends
    "bomb": "answer-too-large",  # 1.5 MB of gzip that would be a GiB
    "long-message": "call-not-found",  # a 404 whose message is 50 KB, with control characters
    "huge-error": "http-404",  # a 404 whose body is 20 MB
    "bad-code": "http-404",  # a 404 whose code is not a token
    "huge-header": "malformed-answer",  # a 100 KB header: every time
    "always-503": "unavailable",
    "deep": "malformed-answer",  # an event nested deeper than JSON can be written back
    "foreign-call-id": None,  # events that name another call (or none): filed under this one
    # What orjson would read changed (harvester.fetch.exactjson): the call fails rather than that.
    "big-integer": "inexact-number",  # 18446744073709551617, past 64 bits
    "small-integer": "inexact-number",  # -9223372036854775809
    "fine-number": "inexact-number",  # 0.1000000000000000000001: more than a double holds
    "tiny-number": "inexact-number",  # 1.5e-400, which a double holds as 0
    "huge-number": "inexact-number",  # 1e400, which orjson refuses to read at all
    "twice-named": "duplicate-key",  # {"name": "create", "name": "answer"}
    "pretty": None,  # indented, with \u escapes and \/: another spelling of the same events
}


@functools.cache
def bomb(mebibytes: int = 1024) -> bytes:
    """About 1 MB of valid gzip that decompresses to 1 GiB of zeros.

    One MiB compressed with a full flush (which resets the compressor, so the same input gives
    the same bytes) is repeated, then closed with an empty final block and the gzip trailer.
    """
    chunk = b"0" * (1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (mebibytes << 20) & 0xFFFFFFFF)
    return header + block * mebibytes + end + trailer


def poison_id(kind: str, number: int = 0) -> str:
    return f"c-poison-{kind}-{number}"


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free loopback port, for the block; yields its base URL."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,  # a client that hangs up ends an endless answer
        shutdown_timeout=0.5,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class Hostile:
    """The hostile API; ``requests`` counts requests by call id (and ``"list"``)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self._stack = contextlib.AsyncExitStack()
        self.base_url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(EVENTS, self._events)
        app.router.add_get("/v1/users/{user}/calls", self._list)
        return app

    async def __aenter__(self) -> Hostile:
        self.base_url = await self._stack.enter_async_context(serving(self.app()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self.requests["list"] += 1
        record = {"id": "c-listed0", "startTime": "2026-11-25T12:00:00Z"}
        return _json([record], {"Link": f'<{request.url}>; rel="next"'})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call"]
        self.requests[call_id] += 1
        if not call_id.startswith("c-poison-"):
            return _json(events_for(call_id))
        kind = call_id.removeprefix("c-poison-").rsplit("-", 1)[0]
        answer: web.StreamResponse = await getattr(self, "_" + kind.replace("-", "_"))(
            request, call_id
        )
        return answer

    async def _retry_after_superscript(self, request: web.Request, call_id: str) -> Any:
        if self.requests[call_id] == 1:
            return _json({"code": "rate-limit-reached"}, {"Retry-After": "²"}, status=429)
        return _json(events_for(call_id))

    async def _reset_garbage(self, request: web.Request, call_id: str) -> Any:
        if self.requests[call_id] == 1:
            return _json({"code": "rate-limit-reached"}, {"X-RateLimit-Reset": "1e999"}, 429)
        return _json(events_for(call_id))

    async def _link_port(self, request: web.Request, call_id: str) -> Any:
        return _json(events_for(call_id), {"Link": '<http://127.0.0.1:999999/x>; rel="next"'})

    async def _link_ipv6(self, request: web.Request, call_id: str) -> Any:
        return _json(events_for(call_id), {"Link": '<http://[zz/x>; rel="next"'})

    async def _link_userinfo(self, request: web.Request, call_id: str) -> Any:
        url = request.url.with_user("user").with_password("pw").with_query(page="2")
        return _json(events_for(call_id), {"Link": f'<{url}>; rel="next"'})

    async def _link_self(self, request: web.Request, call_id: str) -> Any:
        return _json(events_for(call_id), {"Link": f'<{request.url}>; rel="next"'})

    async def _link_cycle(self, request: web.Request, call_id: str) -> Any:
        back = request.query.get("page") == "2"
        link = request.url.with_query(None) if back else request.url.with_query(page="2")
        return _json(events_for(call_id), {"Link": f'<{link}>; rel="next"'})

    async def _link_foreign(self, request: web.Request, call_id: str) -> Any:
        return _json(events_for(call_id), {"Link": '<https://evil.example/x>; rel="next"'})

    async def _endless_pages(self, request: web.Request, call_id: str) -> Any:
        page = int(request.query.get("page", "0")) + 1
        events = [{"name": "dtmf", "data": str(i)} for i in range(1000)]
        return _json(events, {"Link": f'<{request.url.with_query(page=page)}>; rel="next"'})

    async def _big_pages(self, request: web.Request, call_id: str) -> Any:
        page = int(request.query.get("page", "0")) + 1
        events = [{"name": "speak", "data": "A" * 1_000_000}]
        return _json(events, {"Link": f'<{request.url.with_query(page=page)}>; rel="next"'})

    async def _empty_pages(self, request: web.Request, call_id: str) -> Any:
        page = int(request.query.get("page", "0")) + 1
        return _json([], {"Link": f'<{request.url.with_query(page=page)}>; rel="next"'})

    async def _many_events(self, request: web.Request, call_id: str) -> Any:
        return web.Response(body=b"[" + b",".join([b"{}"] * 500_000) + b"]")

    async def _too_long(self, request: web.Request, call_id: str) -> Any:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 1 << 30
        await response.prepare(request)
        await response.write(b"[" + b" " * 65536)
        await asyncio.sleep(30)
        return response

    async def _endless(self, request: web.Request, call_id: str) -> Any:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b'{"name":"x"},' * 5000
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(b"[" + chunk)
        return response

    async def _bomb(self, request: web.Request, call_id: str) -> Any:
        return web.Response(
            body=bomb(), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    async def _long_message(self, request: web.Request, call_id: str) -> Any:
        message = "\x1b[31mno\nsuch call\r" + "x" * 50_000
        return _json({"code": "call-not-found", "message": message}, status=404)

    async def _huge_error(self, request: web.Request, call_id: str) -> Any:
        body = orjson.dumps({"code": "call-not-found", "message": "y" * 20_000_000})
        return web.Response(body=body, status=404, content_type="application/json")

    async def _bad_code(self, request: web.Request, call_id: str) -> Any:
        return _json({"code": "x\ny" * 500, "message": "odd"}, status=404)

    async def _huge_header(self, request: web.Request, call_id: str) -> Any:
        return _json(events_for(call_id), {"X-Padding": "p" * 100_000})

    async def _deep(self, request: web.Request, call_id: str) -> Any:
        nested = b"[" * 400 + b"]" * 400
        return web.Response(body=b'[{"name":"x","data":' + nested + b"}]")

    async def _foreign_call_id(self, request: web.Request, call_id: str) -> Any:
        events = events_for(call_id)
        for number, event in enumerate(events):
            event["callId"] = [GOOD_VICTIM, None, 7][number % 3]
        return _json(events)

    async def _big_integer(self, request: web.Request, call_id: str) -> Any:
        return _with_number(call_id, b"18446744073709551617")

    async def _small_integer(self, request: web.Request, call_id: str) -> Any:
        return _with_number(call_id, b"-9223372036854775809")

    async def _fine_number(self, request: web.Request, call_id: str) -> Any:
        return _with_number(call_id, b"0.1000000000000000000001")

    async def _tiny_number(self, request: web.Request, call_id: str) -> Any:
        return _with_number(call_id, b"1.5e-400")

    async def _huge_number(self, request: web.Request, call_id: str) -> Any:
        return _with_number(call_id, b"1e400")

    async def _twice_named(self, request: web.Request, call_id: str) -> Any:
        body = orjson.dumps(events_for(call_id))
        body = body.replace(b'{"', b'{"name":"create","', 1)
        return web.Response(body=body, content_type="application/json")

    async def _pretty(self, request: web.Request, call_id: str) -> Any:
        text = json.dumps(events_for(call_id), indent=2, ensure_ascii=True)
        body = text.replace("/", "\\/").replace("e", "\\u0065").encode()
        return web.Response(body=body, content_type="application/json")

    async def _always_503(self, request: web.Request, call_id: str) -> Any:
        return _json({"code": "unavailable", "message": "not this one"}, status=503)


def _with_number(call_id: str, number: bytes) -> web.Response:
    """The call's events, the last one holding ``number`` as it is written here."""
    body = orjson.dumps(events_for(call_id))
    return web.Response(body=body[:-2] + b',"cost":' + number + b"}]")


def _json(body: Any, headers: dict[str, str] | None = None, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def expected_code(call_id: str) -> str | None:
    kind = call_id.removeprefix("c-poison-").rsplit("-", 1)[0]
    return POISONS[kind]


async def _serve(url_file: Path) -> None:
    bomb()
    async with Hostile() as api:
        url_file.with_suffix(".tmp").write_text(api.base_url + "\n")
        url_file.with_suffix(".tmp").replace(url_file)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1])))

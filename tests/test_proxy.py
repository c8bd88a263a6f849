"""Corporate networks: every request through an HTTP proxy, named by --proxy or by the
environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), its credentials never shown."""

from __future__ import annotations

import asyncio
import contextlib
import http
import os
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web

from harvester.credentials import proxy_from_environment
from harvester.errors import FatalApiError
from harvester.run.job import harvest
from harvester.sim.server import SIM_SECRET, SIM_TOKEN, SIM_USER_ID, SimConfig, Simulator

from .conftest import (
    FakeClock,
    assert_exactly_once,
    make_settings,
    output_of,
    read_ndjson,
    run_harvester,
    write_calls,
)
from .hostile import serving


class TunnellingProxy(socketserver.ThreadingTCPServer):
    """An HTTPS proxy on loopback, on threads of its own: each ``CONNECT`` is answered with the
    status ``refuse(n)`` gives for the n-th (from 1), or with a tunnel when it gives None."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, refuse: Callable[[int], int | None]) -> None:
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.refuse = refuse
        self.connects = 0
        self._count = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.server_address[1]}"

    def number(self) -> int:
        with self._count:
            self.connects += 1
            return self.connects


class _Tunnel(socketserver.StreamRequestHandler):
    server: TunnellingProxy

    def handle(self) -> None:
        head = self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        method, target, _ = head.split(b" ", 2)
        status = self.server.refuse(self.server.number()) if method == b"CONNECT" else 405
        if status is not None:
            phrase = http.HTTPStatus(status).phrase
            self.wfile.write(
                f"HTTP/1.1 {status} {phrase}\r\nProxy-Authenticate: Basic realm=x\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            return
        host, port = target.decode().rsplit(":", 1)
        with socket.create_connection((host, int(port))) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            ends = [self.connection, upstream]
            while True:
                ready, _, _ = select.select(ends, [], [], 30)
                if not ready:
                    return
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)


@contextlib.contextmanager
def tunnelling(refuse: Callable[[int], int | None]) -> Iterator[TunnellingProxy]:
    proxy = TunnellingProxy(refuse)
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


class ForwardProxy:
    """A plain HTTP forward proxy on loopback that relays what it is asked and counts it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.url = ""

    async def relay(self, request: web.Request) -> web.Response:
        self.seen.append(str(request.url))
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                request.url, headers={"Authorization": request.headers.get("Authorization", "")}
            ) as answer,
        ):
            body = await answer.read()
            headers = {k: v for k, v in answer.headers.items() if k.lower() == "content-type"}
            return web.Response(status=answer.status, body=body, headers=headers)


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    forward = ForwardProxy()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", forward.relay)
    async with serving(app) as url:
        forward.url = url
        yield forward


async def test_every_request_goes_through_the_proxy_given(
    sim: Simulator, clock: FakeClock, tmp_path: Path, proxy: ForwardProxy
) -> None:
    ids = sim.call_ids()[:10]
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, proxy=proxy.url)

    await harvest(settings, clock=clock)

    assert_exactly_once(output_of(settings), ids)
    assert len(proxy.seen) == len(ids) == len(sim.requests)


def test_the_environment_names_the_proxy_but_for_hosts_in_no_proxy() -> None:
    api = "https://api.catapult.inetwork.com"
    assert proxy_from_environment(api, {}) is None
    environ = {"HTTPS_PROXY": "http://proxy.corp:3128"}
    assert proxy_from_environment(api, environ) == ("HTTPS_PROXY", "http://proxy.corp:3128")
    assert proxy_from_environment("http://127.0.0.1:8080", environ) is None, "http, not https"
    for bypass in ("inetwork.com", ".inetwork.com", "api.catapult.inetwork.com:443", "*"):
        assert proxy_from_environment(api, {**environ, "NO_PROXY": f"localhost,{bypass}"}) is None
    assert proxy_from_environment(api, {**environ, "no_proxy": "example.com"}) is not None


def test_the_proxys_credentials_are_never_shown(sim_process: dict[str, str]) -> None:
    secret = "pr0xy-s3cret"
    proxy = f"http://someone:{secret}@127.0.0.1:9"
    done = run_harvester(sim_process, "check", "--proxy", proxy, "--timeout", "2")
    assert done.returncode == 6, done.stderr  # nothing listens there: unreachable
    assert b"cannot connect to the proxy 127.0.0.1:9" in done.stderr, "the proxy, not the API"
    assert b"the API at" not in done.stderr, "not blamed on the API"
    assert secret.encode() not in done.stdout + done.stderr
    bad = run_harvester(sim_process, "check", "--proxy", f"socks5://x:{secret}@h")
    assert bad.returncode == 2 and b"--proxy" in bad.stderr
    assert secret.encode() not in bad.stdout + bad.stderr
    api = "https://api.example.com"  # not loopback: the environment's proxy applies
    for broken in (f"http://bob:{secret}@127.0.0.1:99999", f"bob:{secret}@127.0.0.1:1"):
        env = {**sim_process, "CATAPULT_BASE_URL": api, "HTTPS_PROXY": broken}
        done = run_harvester(env, "check")
        assert done.returncode == 2 and b"HTTPS_PROXY" in done.stderr, done.stderr
        assert secret.encode() not in done.stdout + done.stderr
    hashed = run_harvester(sim_process, "check", "--proxy", "http://bob:s3cr#etpw@127.0.0.1:1")
    assert b"s3cr" not in hashed.stdout + hashed.stderr
    nowhere = run_harvester(sim_process, "check", "--proxy", f"http://u:{secret}@nowhere.invalid:1")
    assert nowhere.returncode == 6, nowhere.stderr
    assert b"cannot connect to the proxy nowhere.invalid:1" in nowhere.stderr
    assert secret.encode() not in nowhere.stdout + nowhere.stderr


async def test_a_proxy_refusing_us_stops_the_run_like_refused_credentials(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=407, headers={"Proxy-Authenticate": "Basic"})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", refuse)
    write_calls(tmp_path, sim.call_ids()[:10])
    async with serving(app) as url:
        settings = make_settings(sim, tmp_path, proxy=url)
        with pytest.raises(FatalApiError, match="407"):
            await harvest(settings, clock=clock)
    assert settings.failures_path.read_bytes() == b"", "not the calls' failure"


PROXY_SECRET = "PXSECRET-d0nt-print"


class Closing(Simulator):
    """The simulator, closing every connection after its answer."""

    def app(self) -> web.Application:
        @web.middleware
        async def closing(request: web.Request, handler: Any) -> web.StreamResponse:
            response: web.StreamResponse = await handler(request)
            response.force_close()
            return response

        app = super().app()
        app.middlewares.append(closing)
        return app


def test_a_proxy_refusing_our_credentials_to_tunnel_is_exit_3_and_never_printed(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    # An https API behind a proxy that answers CONNECT with 407: aiohttp's error for it holds
    # the proxy's URL, password and all.
    (tmp_path / "calls.txt").write_text("c-one\nc-two\n")
    summary = tmp_path / "summary.json"
    with tunnelling(lambda _: 407) as proxy:
        env = {
            **sim_process,
            "CATAPULT_BASE_URL": "https://api.example.com",
            "HTTPS_PROXY": proxy.url(f"puser:{PROXY_SECRET}@"),
        }
        run = run_harvester(
            env,
            *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "out.ndjson")),
            *("--summary", str(summary), "--verbose", "--no-progress"),
        )
        check = run_harvester(env, "check")
        json_logs = run_harvester(
            env,
            *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "out.ndjson")),
            *("--log-format", "json", "--verbose", "--no-progress"),
        )

    assert run.returncode == check.returncode == json_logs.returncode == 3, run.stderr
    assert b"refused our credentials (407)" in run.stderr
    assert b"127.0.0.1" in check.stderr and b"407" in check.stderr
    everything = run.stdout + run.stderr + check.stdout + check.stderr + json_logs.stderr
    everything += summary.read_bytes() + (tmp_path / "out.failures.ndjson").read_bytes()
    assert PROXY_SECRET.encode() not in everything
    assert b"puser" not in everything
    assert orjson.loads(summary.read_bytes())["status"] == "aborted"
    assert proxy.connects >= 2


async def test_a_proxy_refusing_some_tunnels_is_named_in_the_failures_never_its_password(
    tmp_path: Path,
) -> None:
    # A real process (it must trust this test's authority, which aiohttp reads at import), an
    # https simulator that closes every connection after its answer (so that every request
    # opens a tunnel of its own), and a proxy that refuses the second and third with 502.
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    trusted = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(trusted))
    simulator = Closing(SimConfig(calls=12))
    await simulator.start(ssl_context=server_context)
    ids = simulator.call_ids()
    (tmp_path / "calls.txt").write_text("\n".join(ids) + "\n")
    output = tmp_path / "out.ndjson"
    try:
        with tunnelling(lambda n: 502 if n in (2, 3) else None) as proxy:
            env = {
                **os.environ,
                "SSL_CERT_FILE": str(trusted),
                "CATAPULT_BASE_URL": simulator.base_url,
                "CATAPULT_USER_ID": SIM_USER_ID,
                "CATAPULT_API_TOKEN": SIM_TOKEN,
                "CATAPULT_API_SECRET": SIM_SECRET,
            }
            args = ["run", "-i", str(tmp_path / "calls.txt"), "-o", str(output)]
            args += ["--proxy", proxy.url(f"puser:{PROXY_SECRET}@"), "--no-progress"]
            args += ["--max-attempts", "1", "--concurrency", "1", "--verbose"]
            done = await asyncio.to_thread(run_harvester, env, *args, process=True)
    finally:
        await simulator.stop()

    failures = read_ndjson(tmp_path / "out.failures.ndjson")
    harvested = {event["callId"] for event in read_ndjson(output)}
    assert done.returncode == 1, done.stderr
    assert [f["callId"] for f in failures] == ids[1:3], "the calls of the refused tunnels"
    assert harvested | {f["callId"] for f in failures} == set(ids)
    assert {f["code"] for f in failures} == {"proxy-error"}
    assert all("refused the tunnel" in f["message"] and "502" in f["message"] for f in failures)
    everything = done.stdout + done.stderr + (tmp_path / "out.failures.ndjson").read_bytes()
    assert PROXY_SECRET.encode() not in everything and b"puser" not in everything

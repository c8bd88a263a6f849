"""Corporate networks: every request through an HTTP proxy, named by --proxy or by the
environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), its credentials never shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from harvester.credentials import proxy_from_environment
from harvester.errors import FatalApiError
from harvester.job import harvest
from harvester.sim import Simulator

from .conftest import (
    FakeClock,
    canonical,
    expected_events,
    make_settings,
    output_of,
    read_ndjson,
    run_harvester,
    write_calls,
)
from .hostile import serving


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

    assert canonical(read_ndjson(output_of(settings))) == canonical(expected_events(ids))
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
    assert b"127.0.0.1:9" in done.stdout + done.stderr
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

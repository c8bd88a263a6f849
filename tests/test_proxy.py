"""Corporate networks: every request through an HTTP proxy, named by --proxy or by the
environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), its credentials never shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from harvester.client import proxy_from_environment
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


def test_the_environment_names_the_proxy_but_for_hosts_in_no_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    api = URL("https://api.catapult.inetwork.com")
    assert proxy_from_environment(api) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    assert proxy_from_environment(api) == "http://proxy.corp:3128"
    assert proxy_from_environment(URL("http://127.0.0.1:8080")) is None, "http, not https"
    for bypass in ("inetwork.com", ".inetwork.com", "api.catapult.inetwork.com:443", "*"):
        monkeypatch.setenv("NO_PROXY", f"localhost,{bypass}")
        assert proxy_from_environment(api) is None, bypass
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert proxy_from_environment(api) == "http://proxy.corp:3128"


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

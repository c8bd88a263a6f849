"""TLS is verified: a server whose certificate is not trusted is refused, the run aborted."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from harvester.errors import FatalApiError
from harvester.run.job import harvest
from harvester.sim.server import SimConfig, Simulator

from .conftest import FakeClock, make_settings, write_calls


async def test_an_untrusted_certificate_aborts_the_run(clock: FakeClock, tmp_path: Path) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    simulator = Simulator(SimConfig(calls=5), clock=clock)
    await simulator.start(ssl_context=server_context)
    try:
        write_calls(tmp_path, simulator.call_ids())
        # https to a loopback host, whose certificate's authority the system does not trust:
        # TLS is always verified, so this must be refused.
        settings = make_settings(simulator, tmp_path)
        assert settings.base_url.startswith("https://")

        with pytest.raises(FatalApiError, match="tls-error"):
            await harvest(settings, clock=clock)
    finally:
        await simulator.stop()
    assert simulator.log == []

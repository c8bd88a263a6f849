"""Shared fixtures: a fake clock, the simulator on a free loopback port, settings for it."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest

from harvester.clock import sleep_timeout
from harvester.config import Settings, load_settings
from harvester.sim import SIM_SECRET, SIM_TOKEN, SIM_USER_ID, SimConfig, Simulator, events_for


class FakeClock:
    """A clock whose sleeps take no real time: a small discrete-event scheduler.

    Sleepers wake one at a time in order of their wake-up time, the clock jumping to each; the
    next wakes only after the previous one has run, so what a task reads from the clock when it
    wakes is the time it asked for.
    """

    def __init__(self) -> None:
        self.now = 1_790_000_000.25  # wall seconds; a quarter into a rate-limit window
        self.offset = 1_000_000.0  # monotonic = wall - offset
        self.sleeps: list[float] = []
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = 0
        self._advance_pending = False

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - self.offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (self.now + max(seconds, 0.0), self._sequence, woken))
        self._sequence += 1
        if not self._advance_pending:
            self._advance_pending = True
            loop.call_soon(self._advance)
        await woken

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return sleep_timeout(self, seconds)

    def _advance(self) -> None:
        self._advance_pending = False
        while self._waiters:
            when, _, woken = heapq.heappop(self._waiters)
            if not woken.cancelled():
                self.now = max(self.now, when)
                woken.set_result(None)
                break
        if self._waiters:
            # Scheduled after the woken task's own step, which set_result just queued.
            self._advance_pending = True
            asyncio.get_running_loop().call_soon(self._advance)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    """The simulator, 50 calls, on a free loopback port, its rate-limit windows on ``clock``."""
    async with Simulator(SimConfig(calls=50), clock=clock) as simulator:
        yield simulator


class Api(Protocol):
    """A server harvester can be pointed at: the simulator, or a hostile stand-in."""

    base_url: str


def make_settings(sim: Api, tmp_path: Path, **flags: Any) -> Settings:
    """Settings for a run against ``sim`` with the call list ``tmp_path/calls.txt``; ``now`` is
    when "yesterday" and deadlines are reckoned from (the real time unless given)."""
    env = {
        "CATAPULT_BASE_URL": sim.base_url,
        "CATAPULT_USER_ID": SIM_USER_ID,
        "CATAPULT_API_TOKEN": SIM_TOKEN,
        "CATAPULT_API_SECRET": SIM_SECRET,
    }
    given = {
        "input": str(tmp_path / "calls.txt"),
        "output": tmp_path / "out" / "events.ndjson",
        "timeout": 5.0,
        "progress": False,
    }
    now: datetime | None = flags.pop("now", None)
    given.update(flags)
    return load_settings(given, env, now=now)


HARVESTER = (sys.executable, "-m", "harvester")


def run_harvester(
    env: dict[str, str], *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """``harvester ARGS`` as a process of its own, to its end, with its output captured."""
    return subprocess.run(
        [*HARVESTER, *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def start_harvester(
    env: dict[str, str], *args: str, stderr: Any = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    """``harvester ARGS`` started as a process of its own (its stdout discarded)."""
    return subprocess.Popen([*HARVESTER, *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def output_of(settings: Settings) -> Path:
    assert settings.output is not None
    return settings.output


def write_calls(tmp_path: Path, ids: list[str], name: str = "calls.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def expected_events(ids: list[str]) -> list[dict[str, Any]]:
    """What the output must hold for ``ids``: every event as sent, plus callId, in any order."""
    return [{"callId": i, **e} for i in ids for e in events_for(i)]


def canonical(events: list[dict[str, Any]]) -> list[bytes]:
    """Events in a fixed order, for comparing outputs whose call order may differ."""
    return sorted(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in events)


@contextlib.contextmanager
def simulator_process(folder: Path, *options: str) -> Iterator[dict[str, str]]:
    """``harvester sim`` as its own process; yields the environment that points at it, plus
    ``IDS_FILE``, the registry's call ids."""
    ready = folder / "url"
    log = folder / "sim.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harvester",
                "sim",
                "--port",
                "0",
                "--ready-file",
                str(ready),
                "--ids-file",
                str(folder / "ids.txt"),
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"simulator did not start: {log.read_text()}")
        time.sleep(0.02)
    try:
        yield {
            **os.environ,
            "CATAPULT_BASE_URL": ready.read_text().strip(),
            "CATAPULT_USER_ID": SIM_USER_ID,
            "CATAPULT_API_TOKEN": SIM_TOKEN,
            "CATAPULT_API_SECRET": SIM_SECRET,
            "IDS_FILE": str(folder / "ids.txt"),
        }
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A well-behaved simulator process with 40 calls, for command-line tests."""
    with simulator_process(tmp_path_factory.mktemp("sim"), "--calls", "40") as env:
        yield env

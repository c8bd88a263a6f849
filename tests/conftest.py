"""Shared fixtures: a fake clock, the simulator on a free loopback port, settings for it."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import heapq
import io
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from unittest import mock

import orjson
import pytest

from harvester.cli import commands as cli
from harvester.settings.config import Settings
from harvester.settings.load import load_settings
from harvester.settings.sources import ENVIRONMENT
from harvester.sim.server import (
    SIM_SECRET,
    SIM_TOKEN,
    SIM_USER_ID,
    SimConfig,
    Simulator,
    events_for,
)


def pytest_configure() -> None:
    """The suite runs on its own settings: a developer's HARVESTER_<KEY> (and the API's
    variables) are set aside, as a run from the environment would take them."""
    for name in [*os.environ]:
        if name in ENVIRONMENT or name.startswith("HARVESTER_"):
            del os.environ[name]


def pytest_sessionfinish() -> None:
    """The zygote of ``start_harvester`` ends with the session, and is waited for."""
    if _zygote is not None:
        _zygote.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (seconds of real time: processes, kills, signals) run first, each
    given to whichever worker is free, so that the workers end together instead of one
    finishing a long test alone at the end (with ``--maxschedchunk``, in pyproject.toml)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


class FakeClock:
    """A clock whose sleeps take no real time: a small discrete-event scheduler.

    Sleepers wake one at a time in order of their wake-up time, the clock jumping to each; the
    next wakes only after the previous one has run, so what a task reads from the clock when it
    wakes is the time it asked for.

    Only sleepers move time. A ``timeout`` goes off once time has passed it, but does not make
    time pass by itself: a commit timer beside a run must not jump the clock ahead of the
    backoffs and rate limits under test each time every worker waits for an answer. A test that
    waits for something else than this clock (an answer that never comes, say) lets time pass
    with a sleep of its own.
    """

    def __init__(self) -> None:
        self.now = 1_790_000_000.25  # wall seconds; a quarter into a rate-limit window
        self.offset = 1_000_000.0  # monotonic = wall - offset
        self.sleeps: list[float] = []
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._alarms: list[tuple[float, int]] = []  # timeouts: when, and which
        self._rings: dict[int, Callable[[], None]] = {}
        self._sequence = 0
        self._advance_pending = False

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - self.offset

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        """Wake ``seconds`` from now: from the moment of the call, as a real sleep's timer is
        set when it is called (not from whenever the task running it, if one is made for it,
        first runs, by when this clock may have moved on)."""
        self.sleeps.append(seconds)
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (self.now + max(seconds, 0.0), self._sequence, woken))
        self._sequence += 1
        if not self._advance_pending:
            self._advance_pending = True
            loop.call_soon(self._advance)
        return woken

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        """``asyncio.timeout`` on this clock (with its ``uncancel``), gone off once a sleeper
        has moved the clock past it."""
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def ring() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        alarm = self._sequence
        self._sequence += 1
        now: asyncio.Handle | None = None
        if seconds <= 0:  # gone off already, as asyncio's would be at its next step
            now = asyncio.get_running_loop().call_soon(ring)
        else:
            heapq.heappush(self._alarms, (self.now + seconds, alarm))
            self._rings[alarm] = ring
        try:
            yield
        except asyncio.CancelledError:
            if expired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            self._rings.pop(alarm, None)
            if now is not None:
                now.cancel()

    def _advance(self) -> None:
        """The next event: the earliest sleeper wakes, unless a timeout falls due before it,
        which then goes off first, at its own time."""
        self._advance_pending = False
        while self._waiters and self._waiters[0][2].cancelled():
            heapq.heappop(self._waiters)
        while self._alarms and self._alarms[0][1] not in self._rings:  # its block ended
            heapq.heappop(self._alarms)
        if not self._waiters:
            return
        if self._alarms and self._alarms[0][0] <= self._waiters[0][0]:
            when, alarm = heapq.heappop(self._alarms)
            self.now = max(self.now, when)
            self._rings.pop(alarm)()
        else:
            when, _, woken = heapq.heappop(self._waiters)
            self.now = max(self.now, when)
            woken.set_result(None)
        if self._waiters:
            # Scheduled after the woken task's own step, which was just queued.
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


class At:
    """The API at ``base_url``: a test's own server, or none at all."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url


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
    env: dict[str, str],
    *args: str,
    stdin: bytes | None = None,
    timeout: float = 60,
    process: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """``harvester ARGS`` to its end, with its output captured: in this process, through the
    command's own ``main`` (as fast as a call), or, with ``stdin`` or ``process``, as a process of
    its own (what signals, standard streams and exit-at-once need). ``timeout`` bounds a process;
    in this process, pytest-timeout does."""
    if stdin is not None or process:
        return subprocess.run(
            [*HARVESTER, *args],
            env=env,
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    return _run_in_process(env, list(args))


def _run_in_process(env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """``cli.main(args)`` with ``env`` as the environment and its stdout and stderr captured:
    stderr also gets what a process would print there of the rest of the log (aiohttp's,
    asyncio's "Exception in callback", a warning), which would otherwise go to pytest. What it
    sets for the process (log handlers and levels, signal handlers) is put back afterwards."""
    loggers = [logging.getLogger(name) for name in ("harvester", "aiohttp")]
    saved_logs = [(each.handlers[:], each.level, each.propagate) for each in loggers]
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stdout, stderr = io.StringIO(), io.StringIO()
    last_resort = logging.StreamHandler(stderr)  # as Python's own, with no handler configured
    last_resort.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(last_resort)
    try:
        with (
            mock.patch.dict(os.environ, env, clear=True),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            try:
                code = cli.main(args)
            except SystemExit as exit_:  # argparse's usage errors, --help, --version
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        root.removeHandler(last_resort)
        for each, (handlers, level, propagate) in zip(loggers, saved_logs, strict=True):
            each.handlers[:], each.level, each.propagate = handlers, level, propagate
        for signum, handler in saved_signals.items():
            signal.signal(signum, handler)
    return subprocess.CompletedProcess(
        [*HARVESTER, *args], code, stdout.getvalue().encode(), stderr.getvalue().encode()
    )


def start_harvester(env: dict[str, str], *args: str, stderr: bool = True) -> Forked:
    """``harvester ARGS`` started as a process of its own (no stdin, its stdout discarded, its
    stderr kept unless ``stderr`` is false), forked from one that has harvester imported: see
    ``tests/zygote.py``. What a test that kills or signals a harvester needs, in milliseconds.
    (A test that measures the process's memory, or wraps it in another command, starts
    ``HARVESTER`` itself.)"""
    global _zygote
    if _zygote is None or _zygote.process.poll() is not None:
        _zygote = _Zygote()
    return _zygote.start(env, list(args), stderr)


class _Zygote:
    """The worker's ``tests.zygote`` process, and what it says of the processes it forked."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        self._started: queue.Queue[int] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._gone = False
        self._ended = threading.Condition()
        threading.Thread(target=self._listen, daemon=True).start()

    def start(self, env: dict[str, str], args: list[str], keep_stderr: bool) -> Forked:
        stderr = None
        if keep_stderr:
            fd, name = tempfile.mkstemp(prefix="harvester-stderr-")
            os.close(fd)
            stderr = Path(name)
        request = {"args": args, "env": env, "stderr": str(stderr) if stderr else None}
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(request) + b"\n")
        self.process.stdin.flush()
        try:
            return Forked(self, self._started.get(timeout=30), stderr)
        except queue.Empty:
            self.process.kill()  # whatever it says next would be taken for the next start's
            raise RuntimeError("the test zygote did not fork a harvester within 30 s") from None

    def wait(self, pid: int, timeout: float | None) -> int | None:
        """``pid``'s exit code once it has ended (told once), None if not within ``timeout``."""
        with self._ended:
            self._ended.wait_for(lambda: pid in self._exits or self._gone, timeout)
            if pid in self._exits:
                return self._exits.pop(pid)
            if self._gone:
                raise RuntimeError(f"the test zygote died; harvester {pid} is unaccounted for")
            return None

    def close(self) -> None:
        """End the zygote (it ends what it forked that still runs) and wait for it."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _listen(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            answer = orjson.loads(line)
            if "started" in answer:
                self._started.put(answer["started"])
            else:
                with self._ended:
                    self._exits[answer["exited"]] = answer["code"]
                    self._ended.notify_all()
        with self._ended:
            self._gone = True
            self._ended.notify_all()


_zygote: _Zygote | None = None


class Forked:
    """A forked harvester, as much of ``subprocess.Popen`` as the tests use."""

    def __init__(self, zygote: _Zygote, pid: int, stderr: Path | None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._zygote = zygote
        self._stderr = stderr

    def poll(self) -> int | None:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.wait(self.pid, timeout)
            if self.returncode is None and timeout:
                raise subprocess.TimeoutExpired(HARVESTER, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[None, bytes]:
        """Wait for the end; its stderr (``b""`` when it was discarded)."""
        self.wait(timeout)
        if self._stderr is None:
            return None, b""
        try:
            return None, self._stderr.read_bytes()
        finally:
            self._stderr.unlink(missing_ok=True)

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it ended just now
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def point_at(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment pointed at the simulator of ``env`` (``simulator_process``'s),
    for the library or ``cli.main`` called directly."""
    for name in ENVIRONMENT:
        monkeypatch.setenv(name, env[name])


def ledger_state(output: Path) -> dict[str, Any]:
    """The state the ledger of ``output``'s job holds now ({} before the first run has
    recorded any), read beside a run that may be writing it."""
    ledger = output.with_name(output.name + ".state") / "ledger.sqlite"
    if not ledger.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(ledger)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    except sqlite3.Error:  # not made yet
        return {}
    return {} if row is None else dict(orjson.loads(row[0]))


def invocations(output: Path) -> int:
    """How many runs have opened the job of ``output``, as its ledger says (0 before the first
    has)."""
    return int(ledger_state(output).get("invocations", 0))


def committed(output: Path, name: str = "events") -> int:
    """How many bytes of the job's file ``name`` its ledger vouches for now."""
    return int(ledger_state(output).get("sizes", {}).get(name, 0))


def opened(process: Forked, output: Path, before: int = 0) -> None:
    """Wait until ``process`` has opened the job of ``output`` (a kill or signal before then
    would meet a Python still starting, not harvester)."""
    while invocations(output) == before:
        assert process.poll() is None, "the run ended before it opened its job"
        time.sleep(0.01)


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


def assert_exactly_once(output: Path, ids: list[str]) -> None:
    """``output`` (gunzipped, if its name ends in ``.gz``) holds every event of the calls
    ``ids`` exactly once, in any order, and nothing else."""
    data = output.read_bytes()
    if output.name.endswith(".gz"):
        data = gzip.decompress(data)
    lines = data.splitlines()
    assert len(lines) == len(set(lines)), f"an event was written twice to {output}"
    assert canonical([orjson.loads(line) for line in lines]) == canonical(expected_events(ids))


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10) -> None:
    """Wait until ``condition()`` is true, polling; fail saying ``what`` was waited for if it is
    not within ``timeout`` seconds. (For a process or thread; a coroutine awaits ``until``.)"""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


async def until(condition: Callable[[], object], what: str, timeout: float = 10) -> None:
    """``wait_until`` for a coroutine: the event loop runs on between looks."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


def sim_log(env: dict[str, str]) -> list[tuple[float, int | None, str]]:
    """Every exchange the simulator process of ``env`` has had so far, as (time, status or None
    while unanswered, path); asked directly, not through any proxy the environment names."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(env["CATAPULT_BASE_URL"] + "/_sim/log", timeout=10) as answer:
        return [(when, status, path) for when, status, path in orjson.loads(answer.read())]


def in_flight(env: dict[str, str]) -> int:
    """How many requests the simulator process of ``env`` has received and not yet answered."""
    return sum(status is None for _, status, _ in sim_log(env))


@contextlib.contextmanager
def simulator_process(folder: Path, *options: str) -> Iterator[dict[str, str]]:
    """``harvester sim`` as its own process; yields the environment that points at it, plus
    ``IDS_FILE``, the registry's call ids."""
    ready = folder / "url"
    process = start_harvester(
        dict(os.environ),
        "sim",
        *("--port", "0", "--ready-file", str(ready), "--ids-file", str(folder / "ids.txt")),
        *options,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"simulator did not start: {process.communicate(10)[1]!r}")
        time.sleep(0.01)
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
        process.communicate(10)


@pytest.fixture(scope="session")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A well-behaved simulator process with 40 calls, for command-line tests."""
    with simulator_process(tmp_path_factory.mktemp("sim"), "--calls", "40") as env:
        yield env


@contextlib.contextmanager
def tiny_filesystem(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mount`` for the block (the test is skipped, saying why,
    where that cannot be done)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny filesystem needs root")
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)

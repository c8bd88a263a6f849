"""Whatever one answer holds, it fails that call at most, never the run, and memory stays
bounded: poison answers from a hostile server, mixed with good calls."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from harvester.errors import FatalApiError
from harvester.ids import CallRef
from harvester.run.job import harvest
from harvester.sim.server import SIM_SECRET, SIM_TOKEN, SIM_USER_ID, call_id_for

from .conftest import (
    HARVESTER,
    FakeClock,
    assert_exactly_once,
    make_settings,
    output_of,
    read_ndjson,
    run_harvester,
)
from .hostile import POISONS, Hostile, expected_code, poison_id

GOOD = [call_id_for(7, i) for i in range(90)]
POISON = [poison_id(kind) for kind in POISONS]


def interleaved() -> list[str]:
    ids: list[str] = []
    for number, call_id in enumerate(GOOD):
        ids.append(call_id)
        if number % 3 == 2 and number // 3 < len(POISON):
            ids.append(POISON[number // 3])
    return ids


@pytest.fixture
async def api() -> AsyncIterator[Hostile]:
    async with Hostile() as server:
        yield server


@pytest.mark.slow
async def test_poison_answers_fail_their_own_call_and_never_the_run(
    api: Hostile, clock: FakeClock, tmp_path: Path
) -> None:
    ids = interleaved()
    assert set(POISON) <= set(ids)
    (tmp_path / "calls.txt").write_text("\n".join(ids) + "\n")
    settings = make_settings(api, tmp_path, concurrency=4, max_attempts=2, timeout=10.0)

    stats = await harvest(settings, clock=clock)

    harvested = [i for i in ids if not i.startswith("c-poison-") or expected_code(i) is None]
    assert_exactly_once(output_of(settings), harvested)
    failures = read_ndjson(settings.failures_path)
    assert {f["callId"]: f["code"] for f in failures} == {
        i: expected_code(i) for i in POISON if expected_code(i) is not None
    }
    assert len(failures) == len({f["callId"] for f in failures}), "each failed call once"
    for failure in failures:
        assert len(failure["message"]) <= 300 and failure["message"].isprintable()
    # Loops and endless answers end the call at once, not after thousands of requests.
    assert api.requests[poison_id("link-self")] == 1
    assert api.requests[poison_id("link-cycle")] == 2
    assert api.requests[poison_id("endless-pages")] == 11  # 10,000 events: max_events
    assert api.requests[poison_id("big-pages")] == 5  # the fifth MB passes 4 MiB: max_body_mb
    assert api.requests[poison_id("empty-pages")] == 4
    assert stats.completed and stats.ok == len(harvested)

    api.requests.clear()
    again = await harvest(settings, clock=clock)

    assert again.completed and sum(api.requests.values()) == 0, "the re-run has nothing to do"


async def test_a_listing_whose_next_link_is_itself_stops_after_one_page(
    api: Hostile, clock: FakeClock, tmp_path: Path
) -> None:
    clock.now = 1_764_072_000.0  # 2025-11-25T12:00:00Z... the listed call is within the window
    settings = make_settings(
        api, tmp_path, input=None, since="2026-11-25T00:00:00Z", until="2026-11-26T00:00:00Z"
    )

    with pytest.raises(FatalApiError, match="listing-loop"):
        await harvest(settings, clock=clock)

    assert api.requests["list"] == 1


@pytest.fixture(scope="module")
def hostile_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The hostile server as a process of its own, so that only the harvester's memory counts."""
    url = tmp_path_factory.mktemp("hostile") / "url"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile", str(url)], cwd=Path(__file__).parent.parent
    )
    deadline = time.monotonic() + 30
    while not url.exists():
        assert process.poll() is None and time.monotonic() < deadline, "hostile server died"
        time.sleep(0.05)
    try:
        yield {
            **os.environ,
            "CATAPULT_BASE_URL": url.read_text().strip(),
            "CATAPULT_USER_ID": SIM_USER_ID,
            "CATAPULT_API_TOKEN": SIM_TOKEN,
            "CATAPULT_API_SECRET": SIM_SECRET,
        }
    finally:
        process.terminate()
        process.wait(10)


def run_measured(env: dict[str, str], *args: str) -> tuple[int, bytes, float]:
    """``harvester`` as a process: its exit code, stderr and peak RSS in MiB, its own VmHWM read
    while it runs (wait4's ru_maxrss would count this process's peak too: Linux carries it
    into a child across fork and exec)."""
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [*HARVESTER, *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        peak = 0
        while process.poll() is None:
            with contextlib.suppress(OSError):  # gone, or a zombie without memory
                found = re.search(
                    r"VmHWM:\s+(\d+)", Path(f"/proc/{process.pid}/status").read_text()
                )
                peak = max(peak, int(found.group(1)) if found else 0)
            time.sleep(0.005)
        stderr.seek(0)
        return process.returncode, stderr.read(), peak / 1024


@pytest.mark.slow
def test_memory_stays_bounded_whatever_the_server_sends(
    hostile_process: dict[str, str], tmp_path: Path
) -> None:
    heavy = ["bomb", "endless", "too-long", "many-events", "endless-pages", "big-pages"]
    heavy += ["huge-error"]
    # Every worker meets a heavy answer at once, twice over, among good calls.
    ids = [*GOOD[:10], *(poison_id(k, n) for n in range(2) for k in heavy), *GOOD[10:30]]
    (tmp_path / "calls.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "events.ndjson"
    args = ["run", "-i", str(tmp_path / "calls.txt"), "-o", str(out), "--no-progress"]

    code, stderr, peak = run_measured(hostile_process, *args, "--concurrency", "8")

    assert code == 1, stderr
    assert b"Traceback" not in stderr
    print(f"peak RSS {peak:.0f} MiB")
    assert 20 < peak < 400, f"peak RSS {peak:.0f} MiB"
    assert_exactly_once(out, [*GOOD[:30]])
    failed = read_ndjson(tmp_path / "events.failures.ndjson")
    assert sorted(f["callId"] for f in failed) == sorted(i for i in ids if "poison" in i)
    assert (
        max(len(line) for line in (tmp_path / "events.failures.ndjson").read_bytes().split(b"\n"))
        < 1000
    )
    assert len(stderr) < 10_000, "nothing the server sent was copied into the log in bulk"
    # The re-run finishes: nothing left to do.
    again = run_harvester(hostile_process, *args)
    assert again.returncode == 1 and b"completed earlier" in again.stderr, again.stderr
    assert orjson.loads(out.read_bytes().splitlines()[0])["callId"] in GOOD


async def test_what_nobody_foresaw_fails_one_call_and_the_run_goes_on(
    api: Hostile, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harvester.store import ndjson

    (tmp_path / "calls.txt").write_text("\n".join(GOOD[:10]) + "\n")
    real = ndjson.event_lines

    def odd(call_id: str, events: list[dict[str, object]]) -> bytes:
        if call_id == GOOD[4]:
            raise KeyError("something no one planned for")
        return real(call_id, events)

    monkeypatch.setattr("harvester.run.pool.event_lines", odd)
    settings = make_settings(api, tmp_path)

    stats = await harvest(settings, clock=clock)

    assert stats.completed and (stats.ok, stats.failed) == (9, 1)
    [failure] = read_ndjson(settings.failures_path)
    assert (failure["callId"], failure["code"]) == (GOOD[4], "unexpected-error")
    assert "KeyError" in failure["message"]


async def test_a_crash_keeps_what_was_done_and_the_same_command_goes_on(
    api: Hostile, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harvester.store.journal import Journal

    (tmp_path / "calls.txt").write_text("\n".join(GOOD) + "\n")
    settings = make_settings(api, tmp_path, commit_calls=1000)
    real = Journal.claim
    claims = 0

    def breaks_later(self: Journal, records: list[CallRef]) -> object:
        nonlocal claims
        claims += 1
        if claims == 5:  # the queue holds 16: by now, calls have been finished
            raise RuntimeError("a bug")
        return real(self, records)

    monkeypatch.setattr("harvester.run.job.FILE_BATCH", 10)
    with monkeypatch.context() as patch:
        patch.setattr(Journal, "claim", breaks_later)
        with pytest.raises(RuntimeError, match="a bug"):
            await harvest(settings, clock=clock)
    done = {event["callId"] for event in read_ndjson(output_of(settings))}
    assert len(done) >= 10, "the calls finished before the crash were committed"

    api.requests.clear()
    stats = await harvest(settings, clock=clock)

    assert_exactly_once(output_of(settings), GOOD)
    assert stats.skipped == len(done) and not done & set(api.requests)

"""Nightly jobs: every night harvested exactly once, whatever happens to a run (``--nights``):
missed nights caught up in one pass over the call list, unfinished ones resumed whatever day
the next run starts on, an overlapping run turned away with a code of its own."""

from __future__ import annotations

import asyncio
import math
import random
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import web

from harvester.errors import AlreadyRunning, ConfigError
from harvester.run.night_plan import Night
from harvester.run.nights import _resume_from, harvest_nights, retry_nights
from harvester.settings.config import Settings
from harvester.settings.load import load_settings
from harvester.sim.server import SIM_SECRET, SIM_TOKEN, SIM_USER_ID, SimConfig, Simulator

from .conftest import (
    FakeClock,
    assert_exactly_once,
    canonical,
    expected_events,
    invocations,
    make_settings,
    opened,
    read_ndjson,
    run_harvester,
    simulator_process,
    start_harvester,
)

ANCHOR = datetime(2026, 11, 26, tzinfo=UTC)  # the registry: 700 calls, 100 a night, before it
NOW = ANCHOR + timedelta(hours=3)
PAGE = 50


class Stopping(Simulator):
    """The simulator, setting ``stop`` (a signal, a deadline) at its ``after``-th events
    request."""

    def __init__(self, clock: FakeClock, stop: asyncio.Event, after: float) -> None:
        super().__init__(SimConfig(calls=700, days=7, anchor=ANCHOR), clock=clock)
        self.stopping, self.after = stop, after

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if sum("/events" in path for path in self.requests) >= self.after:
            self.stopping.set()
        return await super()._events(request)


@pytest.fixture
async def week(clock: FakeClock) -> AsyncIterator[Simulator]:
    clock.now = NOW.timestamp()
    async with Simulator(SimConfig(calls=700, days=7, anchor=ANCHOR), clock=clock) as sim:
        yield sim


def nightly(sim: Simulator, tmp_path: Path, now: datetime = NOW, **flags: Any) -> Any:
    flags.setdefault("output", tmp_path / "out" / "events-{date}.ndjson")
    flags.setdefault("list_page_size", PAGE)
    return make_settings(sim, tmp_path, now=now, input=None, **flags)


def day(back: int, today: datetime = NOW) -> date:
    return (today - timedelta(days=back)).date()


def calls_of(sim: Simulator, night: date) -> list[str]:
    since = datetime.combine(night, datetime.min.time(), UTC)
    return [r["id"] for r in sim.calls_between(since, since + timedelta(days=1))]


def output_of(tmp_path: Path, night: date) -> Path:
    return tmp_path / "out" / f"events-{night}.ndjson"


def exact(sim: Simulator, tmp_path: Path, night: date) -> bool:
    """The night's output holds its calls' events, each exactly once."""
    lines = output_of(tmp_path, night).read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines]
    return len(lines) == len(set(lines)) and canonical(events) == canonical(
        expected_events(calls_of(sim, night))
    )


def list_requests(sim: Simulator) -> list[str]:
    return [path for path in sim.requests if path.split("?")[0].endswith("/calls")]


def asked_for(sim: Simulator, night: date) -> set[str]:
    ids = set(calls_of(sim, night))
    return {path.split("/")[-2] for path in sim.requests if path.endswith("/events")} & ids


async def test_missed_nights_are_caught_up_in_one_pass_and_a_done_one_is_not_touched(
    week: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    yesterday = await harvest_nights(nightly(week, tmp_path, nights=1), clock=clock)
    assert [(n["date"], n["status"]) for n in yesterday.nights] == [(str(day(1)), "completed")]
    week.log.clear()

    stats = await harvest_nights(nightly(week, tmp_path, nights=4), clock=clock)

    assert [(n["date"], n["status"], n["earlier"]) for n in stats.nights] == [
        (str(day(4)), "completed", False),
        (str(day(3)), "completed", False),
        (str(day(2)), "completed", False),
        (str(day(1)), "completed", True),
    ]
    assert all(exact(week, tmp_path, day(back)) for back in (1, 2, 3, 4))
    assert asked_for(week, day(1)) == set(), "a night completed earlier is not touched"
    assert stats.completed and stats.nights_behind == 0
    # One pass: the pages from the newest call back to the oldest night's start, once.
    newer = sum(1 for r in week.call_records() if r["startTime"] >= f"{day(4)}T00:00")
    assert len(list_requests(week)) == math.floor(newer / PAGE) + 1


class SlowOlderNight(Simulator):
    """The simulator, but for the calls of the night before yesterday, answered 503 until
    ``stop`` is set, which it sets once every call of yesterday's has been answered."""

    def __init__(self, clock: FakeClock, stop: asyncio.Event) -> None:
        super().__init__(SimConfig(calls=700, days=7, anchor=ANCHOR), clock=clock)
        self.stopping = stop
        self.fast, self.slow = set(calls_of(self, day(1))), set(calls_of(self, day(2)))
        self.answered: set[str] = set()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call"]
        if call_id in self.slow and not self.stopping.is_set():
            return web.json_response({"code": "unavailable"}, status=503)
        answer = await super()._events(request)
        self.answered.add(call_id)
        if self.fast <= self.answered:
            self.stopping.set()
        return answer


async def test_a_stopped_catch_up_resumes_where_no_night_has_calls_left_behind(
    clock: FakeClock, tmp_path: Path
) -> None:
    # Pages of 60, 100 calls a night: the second page holds the last 40 calls of the newest
    # night and the first 20 of the night before. Stopped once the newest is all done (its
    # place is past that page), the older night's calls on it are not: the next run must list
    # that page again, not go on from the newest night's place.
    clock.now = NOW.timestamp()
    stop = asyncio.Event()
    async with SlowOlderNight(clock, stop) as sim:
        settings = nightly(
            sim, tmp_path, nights=2, list_page_size=60, commit_calls=1, max_attempts=100
        )
        first = await harvest_nights(settings, clock=clock, stop=stop)
        assert [n["status"] for n in first.nights] == ["stopped", "stopped"]
        assert first.nights[1]["calls"] == 100 and first.nights[0]["calls"] < 20

        stats = await harvest_nights(
            nightly(sim, tmp_path, nights=2, list_page_size=60), clock=clock
        )

    assert [n["status"] for n in stats.nights] == ["completed", "completed"]
    # The progress says the job's events: those the first run wrote, and this one's.
    assert stats.events_before == sum(entry["events"] for entry in first.nights)
    assert stats.events_before + stats.events == sum(n["events"] for n in stats.nights)
    assert exact(sim, tmp_path, day(2)) and exact(sim, tmp_path, day(1))


def test_a_catch_up_goes_on_from_the_earliest_of_its_nights_places_in_the_list(
    tmp_path: Path,
) -> None:
    def pending(cursor: str | None, time: str | None) -> Night:
        each = Night(day(1), Settings(), {})
        state = SimpleNamespace(list_cursor=cursor, list_cursor_time=time)
        each.sink = SimpleNamespace(state=state)  # type: ignore[assignment]
        return each

    # Newest first: the later a page's oldest start, the earlier the page in the list.
    older = pending("page=1", "2026-11-25T09:43:12+00:00")
    newer = pending("page=2", "2026-11-24T19:19:12+00:00")
    assert _resume_from([older, newer]) == "page=1"
    assert _resume_from([newer, older]) == "page=1"
    assert _resume_from([older, pending(None, None)]) is None, "a night with no place: the top"
    assert _resume_from([older, pending("page=3", None)]) is None, "a place of unknown time"


async def test_shards_split_the_nights_with_no_gap_and_no_overlap(
    week: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    template = tmp_path / "out" / "events-{date}-{shard}.ndjson"
    for shard in ("0/2", "1/2"):
        settings = nightly(week, tmp_path, nights=2, shard=shard, output=template)
        stats = await harvest_nights(settings, clock=clock)
        assert [n["status"] for n in stats.nights] == ["completed", "completed"]

    for back in (1, 2):
        parts = [tmp_path / "out" / f"events-{day(back)}-{k}.ndjson" for k in (0, 1)]
        events = [event for part in parts for event in read_ndjson(part)]
        assert canonical(events) == canonical(expected_events(calls_of(week, day(back))))
        assert all(read_ndjson(part) for part in parts), "both shards hold calls"


async def test_an_unfinished_night_is_resumed_whatever_day_the_next_run_starts_on(
    clock: FakeClock, tmp_path: Path
) -> None:
    clock.now = NOW.timestamp()
    stop = asyncio.Event()
    async with Stopping(clock, stop, after=30) as sim:
        first = await harvest_nights(
            nightly(sim, tmp_path, nights=1, concurrency=2, commit_calls=5), clock=clock, stop=stop
        )
        assert [n["status"] for n in first.nights] == ["stopped"] and first.nights_behind == 1
        # The restart comes after midnight: "the last night" is now another one.
        sim.after = math.inf
        later = NOW + timedelta(days=1)
        stats = await harvest_nights(nightly(sim, tmp_path, now=later, nights=1), clock=clock)

    assert [(n["date"], n["status"]) for n in stats.nights] == [
        (str(day(1)), "completed"),
        (str(day(1, later)), "completed"),
    ]
    assert exact(sim, tmp_path, day(1))
    assert stats.nights_behind == 0


async def test_a_night_another_run_holds_turns_this_run_away_untouched(
    week: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    settings = nightly(week, tmp_path, nights=3)
    await harvest_nights(nightly(week, tmp_path, nights=1), clock=clock)
    from harvester.store.journal import Journal  # the other run, holding night 2's lock

    other = tmp_path / "out" / f"events-{day(2)}.ndjson"
    holder = Journal.open(
        {"events": other, "failures": tmp_path / "out" / f"events-{day(2)}.failures.ndjson"},
        {"window": "other"},
    )
    try:
        with pytest.raises(AlreadyRunning, match=f"night {day(2)}"):
            await harvest_nights(settings, clock=clock)
    finally:
        holder.close()
    assert not output_of(tmp_path, day(3)).exists(), "nothing touched"


@pytest.mark.parametrize(
    "flags",
    [
        {"output": "out/events.ndjson"},
        {"failures": "out/failures.ndjson"},
        {"calls_output": "out/calls.ndjson"},
    ],
)
def test_a_night_path_without_date_is_refused_before_anything(
    week: Simulator, tmp_path: Path, flags: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match=r"has no \{date\}"):
        nightly(week, tmp_path, nights=3, **{k: tmp_path / v for k, v in flags.items()})


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ({"output": "out/{date}/events-{date}.ndjson"}, "more than once"),
        ({"summary": "out/summary-{date}.json"}, "it is the run's"),
    ],
)
def test_dates_a_night_cannot_keep_apart_are_refused(
    week: Simulator, tmp_path: Path, flags: dict[str, Any], said: str
) -> None:
    with pytest.raises(ConfigError, match=said):
        nightly(week, tmp_path, nights=3, **{k: tmp_path / v for k, v in flags.items()})


async def test_nights_of_another_time_zone_are_another_job_not_done_ones(
    week: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    await harvest_nights(nightly(week, tmp_path, nights=2), clock=clock)

    with pytest.raises(ConfigError, match=r"another job.*--tz"):
        await harvest_nights(nightly(week, tmp_path, nights=3, tz="Asia/Kolkata"), clock=clock)


async def test_retry_failed_takes_every_night_begun(
    week: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    first = await harvest_nights(nightly(week, tmp_path, nights=3, max_events=3), clock=clock)
    assert all(n["failed"] > 0 for n in first.nights)

    stats = await retry_nights(nightly(week, tmp_path, nights=3), clock=clock)

    assert [(n["date"], n["status"], n["failed"]) for n in stats.nights] == [
        (str(day(back)), "completed", 0) for back in (3, 2, 1)
    ]
    assert all(exact(week, tmp_path, day(back)) for back in (1, 2, 3))


# -- the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_week(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A simulator process: 300 calls over the three days before today, slow enough to be
    stopped mid-run, with 5xx and resets."""
    with simulator_process(
        tmp_path_factory.mktemp("faulty-week"),
        *("--calls", "300", "--days", "3", "--latency", "0.004"),
        *("--fault", "503=0.05", "--fault", "reset=0.03", "--fault", "500=0.02"),
    ) as env:
        yield env


def today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def week_args(folder: Path, *more: str) -> list[str]:
    return [
        *("run", "--nights", "3", "-o", str(folder / "out" / "events-{date}.ndjson.gz")),
        *("--calls-output", str(folder / "out" / "calls-{date}.ndjson.gz")),
        *("--summary", str(folder / "summary.json"), "--metrics-file", str(folder / "m.prom")),
        *("--no-progress", "--commit-every", "4", "--commit-interval", "0.05"),
        *("--list-page-size", "20", "--concurrency", "2", *more),
    ]


def nights_behind(folder: Path) -> int:
    for line in (folder / "m.prom").read_text().splitlines():
        if line.startswith("harvester_nights_behind "):
            return int(line.split()[1])
    raise AssertionError("no harvester_nights_behind in the metrics file")


@pytest.mark.slow
def test_a_catch_up_stopped_and_killed_through_faults_ends_with_every_night_exact(
    faulty_week: dict[str, str], tmp_path: Path
) -> None:
    import gzip

    registry = Simulator(SimConfig(calls=300, days=3, anchor=today()))
    nights = [(today() - timedelta(days=back)).date() for back in (3, 2, 1)]
    newest = tmp_path / "out" / f"events-{nights[-1]}.ndjson.gz"
    rng = random.Random(8)

    stopped = start_harvester(faulty_week, *week_args(tmp_path))  # SIGTERM at a random moment
    opened(stopped, newest)
    time.sleep(rng.uniform(0.1, 0.4))
    stopped.terminate()
    assert stopped.wait(30) == 143
    assert nights_behind(tmp_path) >= 1, "written at the end of a stopped run too"
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["exit_code"] == 143 and len(summary["by_night"]) == 3
    kills = 0
    for _ in range(4):
        before = invocations(newest)
        process = start_harvester(faulty_week, *week_args(tmp_path), stderr=False)
        opened(process, newest, before)
        time.sleep(rng.uniform(0.0, 0.4))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    done = run_harvester(faulty_week, *week_args(tmp_path, "--concurrency", "16"))

    assert done.returncode == 0, done.stderr
    assert kills >= 2
    assert nights_behind(tmp_path) == 0
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert [n["status"] for n in summary["by_night"]] == ["completed"] * 3
    for night in nights:
        since = datetime.combine(night, datetime.min.time(), UTC)
        ids = [r["id"] for r in registry.calls_between(since, since + timedelta(days=1))]
        assert_exactly_once(tmp_path / "out" / f"events-{night}.ndjson.gz", ids)
        listed = gzip.decompress((tmp_path / "out" / f"calls-{night}.ndjson.gz").read_bytes())
        assert sorted(orjson.loads(x)["id"] for x in listed.splitlines()) == sorted(ids)


def test_a_second_run_at_once_is_turned_away_with_a_code_of_its_own(
    faulty_week: dict[str, str], tmp_path: Path
) -> None:
    slow = week_args(tmp_path, "--rate", "20")
    first = start_harvester(faulty_week, *slow)
    try:
        opened(first, tmp_path / "out" / f"events-{(today() - timedelta(days=1)).date()}.ndjson.gz")
        second = run_harvester(faulty_week, *week_args(tmp_path))
        assert second.returncode == 75, second.stderr
        assert f"pid {first.pid}".encode() in second.stderr
        assert not (tmp_path / "summary.json").exists(), "the first run's files are its own"
    finally:
        first.terminate()
        assert first.wait(30) == 143, "the first run goes on, unharmed, until stopped"


def test_status_tells_each_night_and_the_template_needs_its_date(
    faulty_week: dict[str, str], tmp_path: Path
) -> None:
    template = str(tmp_path / "out" / "events-{date}.ndjson.gz")
    first = run_harvester(faulty_week, *week_args(tmp_path), "--max-duration", "0.3s")
    assert first.returncode in (0, 5), first.stderr

    lines = run_harvester(faulty_week, "status", "-o", template, "--nights", "4")
    parsed = run_harvester(faulty_week, "status", "-o", template, "--nights", "4", "--json")
    fixed = run_harvester(
        faulty_week, "run", "--nights", "2", "-o", str(tmp_path / "fixed.ndjson"), "--no-progress"
    )

    assert lines.returncode == parsed.returncode == 0, lines.stderr
    text = lines.stdout.decode().splitlines()
    assert len(text) == 4 and text[0].endswith("not started"), text
    nights = orjson.loads(parsed.stdout)["nights"]
    assert [n["date"] for n in nights] == [
        str((today() - timedelta(days=back)).date()) for back in (4, 3, 2, 1)
    ]
    assert {n["state"] for n in nights[1:]} <= {"completed", "unfinished", "not started"}
    assert fixed.returncode == 2 and b"has no {date}" in fixed.stderr
    assert not (tmp_path / "fixed.ndjson.state").exists(), "refused before anything"


async def test_the_example_config_copied_as_is_serves_night_after_night(
    week: Simulator, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.example.toml, its user id and credentials filled in as the README says, and
    nothing else changed: night after night, each night its own files, none refused."""
    text = (Path(__file__).parent.parent / "config.example.toml").read_text()
    for key, value in (("user_id", SIM_USER_ID), ("api_token", SIM_TOKEN), ("api_secret", "s")):
        text = re.sub(rf"^{key} = .*$", f'{key} = "{value}"', text, flags=re.M)
    config = tmp_path / "harvester.toml"
    config.write_text(text)
    config.chmod(0o600)
    monkeypatch.chdir(tmp_path)  # the config's paths are relative: the job's directory
    environment = {"CATAPULT_BASE_URL": week.base_url, "CATAPULT_API_SECRET": SIM_SECRET}

    written: dict[str, bytes] = {}
    for later in range(3):
        now = NOW + timedelta(days=later)
        settings = load_settings({"progress": False}, environment, config, now=now)
        assert settings.nights == 7
        stats = await harvest_nights(settings, clock=clock)

        assert [n["status"] for n in stats.nights] == ["completed"] * 7
        assert [n["date"] for n in stats.nights] == [str(day(b, now)) for b in range(7, 0, -1)]
        for night in stats.nights:
            output = Path(night["output"])
            assert output.parent == Path("out") and night["date"] in output.name
            assert night["date"] in Path(night["failures_file"]).name
            # A night done is never written again.
            before = written.setdefault(night["date"], output.read_bytes())
            assert output.read_bytes() == before
    for back in range(1, 8):
        events = tmp_path / f"out/events-{day(back)}.ndjson.gz"
        assert_exactly_once(events, calls_of(week, day(back)))


async def test_a_night_with_no_call_is_said_as_a_warning(
    week: Simulator, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The registry holds seven nights: of nine asked for, the two oldest hold no call, which
    is said (cron --quiet mails a warning only when the run fails; the log keeps it)."""
    stats = await harvest_nights(nightly(week, tmp_path, nights=9), clock=clock)
    assert stats.completed
    empty = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sorted(m for m in empty if "holds no call at all" in m) == [
        f"nothing to harvest: the night {day(back)} holds no call at all (is it the account's "
        "user id? --fail-on-empty makes this exit 7)"
        for back in (9, 8)
    ]

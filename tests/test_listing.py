"""Nightly mode: the window's calls, found through the call list, exactly; shards; gzip."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.errors import ConfigError, FatalApiError
from harvester.input.listing import start_time
from harvester.run.job import harvest
from harvester.run.nights import harvest_nights
from harvester.sim.server import SimConfig, Simulator
from harvester.store.status import job_status

from .conftest import (
    FakeClock,
    assert_exactly_once,
    canonical,
    make_settings,
    read_ndjson,
)

ANCHOR = datetime(2026, 11, 26, tzinfo=UTC)


@pytest.fixture
async def registry(clock: FakeClock) -> AsyncIterator[Simulator]:
    """1,500 calls over the three days before 2026-11-26; it is 06:00 UTC that day."""
    clock.now = NOW.timestamp()
    config = SimConfig(calls=1500, days=3, anchor=ANCHOR)
    async with Simulator(config, clock=clock) as simulator:
        yield simulator


def list_requests(sim: Simulator) -> list[str]:
    return [path for path in sim.requests if path.split("?")[0].endswith("/calls")]


NOW = ANCHOR + timedelta(hours=6)  # the registry's clock


def window_settings(sim: Simulator, tmp_path: Path, **flags: Any) -> Any:
    return make_settings(sim, tmp_path, now=NOW, input=None, list_page_size=100, **flags)


@pytest.mark.parametrize("cursor", [False, True], ids=["page-links", "cursor-links"])
async def test_the_window_is_exact_at_both_edges_and_listing_stops_early(
    registry: Simulator, clock: FakeClock, tmp_path: Path, cursor: bool
) -> None:
    registry.config.list_cursor = cursor
    records = registry.call_records()
    # The window's edges fall exactly on two calls' start times.
    since_call, until_call = records[1000], records[700]
    since, until = start_time(since_call), start_time(until_call)
    assert since is not None and until is not None
    settings = window_settings(
        registry,
        tmp_path,
        since=since_call["startTime"],
        until=until_call["startTime"],
        calls_output=tmp_path / "out" / "calls.ndjson",
    )

    stats = await harvest(settings, clock=clock)

    expected = registry.calls_between(since, until)
    ids = [r["id"] for r in expected]
    assert since_call["id"] in ids, "since is inclusive"
    assert until_call["id"] not in ids, "until is exclusive"
    assert len(ids) == 300
    assert_exactly_once(settings.output, ids)
    assert canonical(read_ndjson(tmp_path / "out" / "calls.ndjson")) == canonical(expected)
    # Pages of 100, newest first: the first call before `since` is number 1001, on page 11.
    assert len(list_requests(registry)) == 11 < 30
    assert stats.listed == 1100
    if cursor:
        assert all("page=" not in path for path in list_requests(registry))


@pytest.mark.parametrize(
    ("zone", "since", "until"),
    [
        ("UTC", "2026-11-25T00:00:00+00:00", "2026-11-26T00:00:00+00:00"),
        ("America/New_York", "2026-11-25T05:00:00+00:00", "2026-11-26T05:00:00+00:00"),
    ],
)
async def test_yesterday_is_the_previous_day_in_the_time_zone(
    registry: Simulator, clock: FakeClock, tmp_path: Path, zone: str, since: str, until: str
) -> None:
    settings = window_settings(
        registry, tmp_path, yesterday=True, tz=zone, output=tmp_path / "out" / "e-{date}.ndjson"
    )

    stats = await harvest_nights(settings, clock=clock)

    ids = [
        r["id"]
        for r in registry.calls_between(
            datetime.fromisoformat(since), datetime.fromisoformat(until)
        )
    ]
    output = tmp_path / "out" / "e-2026-11-25.ndjson"
    assert_exactly_once(output, ids)
    assert [(night["date"], night["status"]) for night in stats.nights] == [
        ("2026-11-25", "completed")
    ]


async def test_shards_are_disjoint_and_together_the_whole(
    registry: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    flags = {"since": "2026-11-25T00:00:00Z", "until": "2026-11-25T06:00:00Z"}
    whole = window_settings(registry, tmp_path, output=tmp_path / "whole.ndjson", **flags)
    await harvest(whole, clock=clock)
    shards = []
    for index in range(3):
        settings = window_settings(
            registry, tmp_path, shard=f"{index}/3", output=tmp_path / "e-{shard}.ndjson", **flags
        )
        stats = await harvest(settings, clock=clock)
        assert stats.other_shard > 0
        shards.append({e["callId"] for e in read_ndjson(tmp_path / f"e-{index}.ndjson")})

    assert all(shards)
    assert (
        not (shards[0] & shards[1]) and not (shards[0] & shards[2]) and not (shards[1] & shards[2])
    )
    assert shards[0] | shards[1] | shards[2] == {
        e["callId"] for e in read_ndjson(tmp_path / "whole.ndjson")
    }


async def test_shards_split_a_call_list_file_too(
    registry: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = registry.call_ids()[:300]
    (tmp_path / "calls.txt").write_text("\n".join(ids))
    seen: list[str] = []
    for index in range(4):
        settings = make_settings(
            registry, tmp_path, shard=f"{index}/4", output=tmp_path / "s{shard}.ndjson"
        )
        await harvest(settings, clock=clock)
        seen += list(dict.fromkeys(e["callId"] for e in read_ndjson(tmp_path / f"s{index}.ndjson")))
    assert sorted(seen) == sorted(ids)


async def test_gzip_output_holds_exactly_the_plain_events(
    registry: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    flags = {"since": "2026-11-25T00:00:00Z", "until": "2026-11-25T06:00:00Z", "commit_calls": 30}
    plain = window_settings(registry, tmp_path, output=tmp_path / "plain.ndjson", **flags)
    packed = window_settings(
        registry,
        tmp_path,
        output=tmp_path / "packed.ndjson.gz",
        calls_output=tmp_path / "calls.ndjson.gz",
        **flags,
    )
    await harvest(plain, clock=clock)
    await harvest(packed, clock=clock)

    unpacked = gzip.decompress((tmp_path / "packed.ndjson.gz").read_bytes())
    assert canonical([orjson.loads(x) for x in unpacked.splitlines()]) == canonical(
        read_ndjson(tmp_path / "plain.ndjson")
    )
    # One gzip member per commit: more than one, each complete.
    assert (tmp_path / "packed.ndjson.gz").read_bytes().count(b"\x1f\x8b\x08") > 1
    assert len(gzip.decompress((tmp_path / "calls.ndjson.gz").read_bytes()).splitlines()) == 125


async def test_a_stopped_listing_run_resumes_where_it_was_not_from_the_top(
    registry: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    flags = {"since": "2026-11-25T00:00:00Z", "until": "2026-11-26T00:00:00Z", "commit_calls": 20}
    settings = window_settings(registry, tmp_path, grace=1.0, **flags)
    stop = asyncio.Event()
    stats_holder: list[Any] = []

    async def stop_half_way() -> None:
        from harvester.stats import RunStats

        stats = RunStats()
        stats_holder.append(stats)
        task = asyncio.create_task(harvest(settings, clock=clock, stats=stats, stop=stop))
        while stats.job.get("calls", 0) < 250:
            await asyncio.sleep(0.01)
        stop.set()
        await task

    await stop_half_way()
    first_run_lists = len(list_requests(registry))
    registry.log.clear()

    stats = await harvest(settings, clock=clock)

    resumed_from = list_requests(registry)[0]
    assert "page=0" not in resumed_from and "page=" in resumed_from
    assert first_run_lists + len(list_requests(registry)) < 2 * 6  # 6 pages in all
    ids = [r["id"] for r in registry.calls_between(datetime(2026, 11, 25, tzinfo=UTC), ANCHOR)]
    assert_exactly_once(settings.output, ids)
    assert stats.job["calls"] == len(ids) == 500


@pytest.mark.parametrize("kind", ["503", "reset", "truncate", "html", "429"])
async def test_listing_retries_like_everything_else_and_events_start_before_it_ends(
    registry: Simulator, clock: FakeClock, tmp_path: Path, kind: str
) -> None:
    registry.config.faults = {kind: 0.4}
    registry.config.faults_on_list = True
    since, until = datetime(2026, 11, 25, tzinfo=UTC), datetime(2026, 11, 25, 12, tzinfo=UTC)
    settings = window_settings(registry, tmp_path, since=since.isoformat(), until=until.isoformat())

    stats = await harvest(settings, clock=clock)

    ids = [r["id"] for r in registry.calls_between(since, until)]
    assert_exactly_once(settings.output, ids)
    assert stats.failed == 0
    pages = list_requests(registry)
    assert len(pages) > len(set(pages)), "some list pages misbehaved and were asked for again"
    paths = registry.requests
    first_events = next(i for i, p in enumerate(paths) if p.endswith("/events"))
    last_list = max(i for i, p in enumerate(paths) if "/calls?" in p)
    assert first_events < last_list, "events were fetched while the list was still being read"


async def test_an_open_window_resumes_and_picks_up_newer_calls(
    registry: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    settings = window_settings(registry, tmp_path, since="2026-11-25T12:00:00Z")
    clock.now = ANCHOR.timestamp() - 6 * 3600  # 18:00 on the 25th
    await harvest(settings, clock=clock)
    first = {e["callId"] for e in read_ndjson(settings.output)}
    since = datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert first == {r["id"] for r in registry.calls_between(since, ANCHOR - timedelta(hours=6))}

    clock.now = ANCHOR.timestamp() + 3600  # later, "now" has moved on: the same job, grown
    stats = await harvest(settings, clock=clock)

    ids = [r["id"] for r in registry.calls_between(since, ANCHOR)]
    assert_exactly_once(settings.output, ids)
    assert stats.skipped == len(first)


async def test_a_window_whose_end_is_still_to_come_is_listed_again_by_a_later_run(
    registry: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    since, until = datetime(2026, 11, 25, 12, tzinfo=UTC), ANCHOR + timedelta(hours=12)
    settings = window_settings(registry, tmp_path, since=since.isoformat(), until=until.isoformat())
    assert (await harvest(settings, clock=clock)).completed  # at 06:00, half-way through
    registry.log.clear()

    again = await harvest(settings, clock=clock)  # calls may have come in meanwhile

    assert again.completed and list_requests(registry), "listed again, not done for good"
    assert again.skipped == len(registry.calls_between(since, until)) and again.calls == 0
    clock.now = until.timestamp() + 60  # the window is over: once complete, complete for good
    await harvest(settings, clock=clock)
    registry.log.clear()
    assert (await harvest(settings, clock=clock)).completed and registry.log == []


async def test_a_list_that_cannot_be_read_aborts_the_run(
    registry: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    registry.config.user_id = "u-someoneelse00000000000"
    settings = window_settings(registry, tmp_path, since="2026-11-25", until="2026-11-26")
    with pytest.raises(FatalApiError):
        await harvest(settings, clock=clock)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"input": "calls.txt", "yesterday": True}, "not both"),
        ({"input": None}, "nothing to harvest: give a call list"),
        (
            {"input": None, "yesterday": True, "since": "2026-11-01"},
            "either --nights/--yesterday or --since",
        ),
        ({"input": None, "since": "yesterday"}, "is not a date or time"),
        ({"input": None, "since": "2026-11-25", "until": "2026-11-24"}, "the window is empty"),
        ({"input": None, "yesterday": True, "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"output": "out/e-{date}.ndjson"}, "needs a window"),
        ({"output": "out/e-{shard}.ndjson"}, "needs --shard"),
        ({"shard": "4/4"}, "must be K/N"),
        ({"calls_output": "calls.ndjson"}, "needs a window"),
    ],
)
async def test_window_and_shard_mistakes_are_explained(
    registry: Simulator, clock: FakeClock, tmp_path: Path, flags: dict[str, Any], message: str
) -> None:
    (tmp_path / "calls.txt").write_text("c-abc\n")
    if flags.get("input"):
        flags["input"] = str(tmp_path / flags["input"])

    async def run() -> None:  # refused when the settings are loaded, or else by the run
        await harvest(make_settings(registry, tmp_path, now=NOW, **flags), clock=clock)

    with pytest.raises(ConfigError, match=message):
        await run()
    assert registry.log == []


async def test_a_completed_open_window_run_again_is_not_completed_until_that_run_is(
    registry: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    settings = window_settings(registry, tmp_path, since="2026-11-25T12:00:00Z")
    assert (await harvest(settings, clock=clock)).job["completed"]
    stop = asyncio.Event()
    stop.set()  # stopped at once: the newer calls of the window are not taken on

    stats = await harvest(settings, clock=clock, stop=stop)

    assert not stats.completed and stats.job["completed"] is False
    assert settings.output is not None and job_status(settings.output)["completed"] is False


async def test_a_stop_before_a_list_page_is_asked_for_is_a_stop_not_a_crash(
    registry: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    settings = window_settings(registry, tmp_path, since="2026-11-25", until="2026-11-26")
    stop = asyncio.Event()
    stop.set()  # SIGTERM while the lister waits for its turn, say: the page is not asked for

    stats = await harvest(settings, clock=clock, stop=stop)

    assert not stats.completed and list_requests(registry) == []
    assert (await harvest(settings, clock=clock)).completed, "the next run goes on"

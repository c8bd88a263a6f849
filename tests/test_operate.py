"""Operating it: check, --max-failures, deadlines, and the library API."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from harvester import harvest_sync
from harvester.errors import ConfigError
from harvester.settings.values import FailureLimit, parse_deadline, parse_duration
from harvester.sim.server import SIM_SECRET

from .conftest import (
    assert_exactly_once,
    point_at,
    read_ndjson,
    run_harvester,
)


def run_list(
    env: dict[str, str], tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    """``harvester run`` of ``tmp_path/calls.txt`` into ``tmp_path/e.ndjson``, no progress."""
    calls, out = str(tmp_path / "calls.txt"), str(tmp_path / "e.ndjson")
    return run_harvester(env, "run", "-i", calls, "-o", out, "--no-progress", *extra)


def test_check_passes_and_shows_the_settings_without_secrets(sim_process: dict[str, str]) -> None:
    done = run_harvester(sim_process, "check")
    assert done.returncode == 0, done.stderr
    assert b"ok: the API accepted the credentials" in done.stdout
    assert b"api_secret = ***" in done.stdout
    assert SIM_SECRET.encode() not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"CATAPULT_API_SECRET": "wrong-secret-1"}, 3, b"Check CATAPULT_API_TOKEN"),
        ({"CATAPULT_USER_ID": "u-notmine"}, 3, b"403"),
        ({"CATAPULT_USER_ID": ""}, 2, b"no user id"),
    ],
)
def test_check_explains_what_is_wrong(
    sim_process: dict[str, str], change: dict[str, str], code: int, message: bytes
) -> None:
    done = run_harvester({**sim_process, **change}, "check")
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert b"wrong-secret-1" not in done.stdout + done.stderr


def test_check_says_when_the_api_cannot_be_reached(sim_process: dict[str, str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run_harvester(
        {**sim_process, "CATAPULT_BASE_URL": f"http://127.0.0.1:{port}"}, "check", "--timeout", "2"
    )
    assert done.returncode == 6, "unreachable: a scheduler may try again later"
    assert b"cannot be reached or is down" in done.stderr


@pytest.mark.parametrize(("allowed", "code"), [("0", 1), ("1", 0), ("5%", 0), ("2%", 1)])
def test_max_failures_decides_the_exit_code(
    sim_process: dict[str, str], tmp_path: Path, allowed: str, code: int
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join([*ids, "c-nosuchcall"]))
    done = run_list(sim_process, tmp_path, "--max-failures", allowed)
    assert done.returncode == code, done.stderr
    assert len(read_ndjson(tmp_path / "e.failures.ndjson")) == 1


def test_the_library_runs_the_same_job(
    sim_process: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_at(sim_process, monkeypatch)
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids))

    stats = harvest_sync(
        input=str(tmp_path / "calls.txt"), output=tmp_path / "e.ndjson", concurrency=4
    )

    assert stats.completed and stats.job["ok"] == len(ids)
    assert (stats.status, stats.exit_code) == ("completed", 0)
    assert_exactly_once(tmp_path / "e.ndjson", ids)
    with pytest.raises(ConfigError, match="unknown setting"):
        harvest_sync(input="x", output="y", colour="blue")

    (tmp_path / "more.txt").write_text("\n".join([*ids, "c-nosuchcall"]))
    more: dict[str, Any] = {"input": str(tmp_path / "more.txt"), "output": tmp_path / "m.ndjson"}
    assert harvest_sync(**more).exit_code == 1, "a failed call, none allowed"
    assert harvest_sync(**more, max_failures=1, fresh=True).exit_code == 0


async def test_harvest_sync_inside_a_running_loop_says_what_to_do_instead() -> None:
    with pytest.raises(RuntimeError, match=r"await harvester.harvest"):
        harvest_sync(input="x", output="y")


NOW = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("deadline", "zone", "seconds"),
    [
        ("06:00", "UTC", 3600),
        ("04:00", "UTC", 23 * 3600),
        ("06:30", "Europe/Berlin", 30 * 60),  # 05:00 UTC is 06:00 in Berlin
        ("2026-11-26T07:00:00Z", "UTC", 2 * 3600),
    ],
)
def test_deadlines(deadline: str, zone: str, seconds: float) -> None:
    moment = parse_deadline(deadline, NOW, ZoneInfo(zone))
    assert (moment - NOW).total_seconds() == seconds


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("5h", 18000), ("1d", 86400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-5m", "0", "h"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ConfigError, match="must be a duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("spec", "calls", "allowed"), [("0", 100, 0), ("7", 100, 7), ("5%", 200, 10), ("0.5%", 1000, 5)]
)
def test_failure_allowances(spec: str, calls: int, allowed: int) -> None:
    assert FailureLimit.parse(spec).allowed(calls) == allowed


@pytest.mark.parametrize("bad", ["-1", "lots", "150%"])
def test_bad_failure_allowances(bad: str) -> None:
    with pytest.raises(ConfigError, match="must be a count"):
        FailureLimit.parse(bad)


def test_summary_of_a_deadline_run_says_so(sim_process: dict[str, str], tmp_path: Path) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids))
    done = run_list(
        sim_process,
        tmp_path,
        "--max-duration",
        "0.001",
        "--rate",
        "5",
        "--summary",
        str(tmp_path / "s.json"),
    )
    assert done.returncode == 5, done.stderr
    report = orjson.loads((tmp_path / "s.json").read_bytes())
    assert report["status"] == "deadline"
    assert report["calls"] < len(ids)

    done = run_list(sim_process, tmp_path)
    assert done.returncode == 0, done.stderr
    assert_exactly_once(tmp_path / "e.ndjson", ids)


def test_a_deadline_already_past_today_is_said_to_be_tomorrows(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "calls.txt").write_text(
        "\n".join(Path(sim_process["IDS_FILE"]).read_text().split()[:3])
    )
    now = datetime.now(UTC)
    if (now - timedelta(minutes=2)).date() != now.date():
        pytest.skip("two minutes ago was yesterday: that time of day is later today")
    past = (now - timedelta(minutes=2)).strftime("%H:%M")
    done = run_list(sim_process, tmp_path, "--deadline", past)
    assert done.returncode == 0, done.stderr
    assert b"deadline: tomorrow, " in done.stderr


def test_the_summary_names_the_files_and_window_it_harvested(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    done = run_harvester(
        sim_process,
        "run",
        "--since",
        "2026-11-25",
        "--until",
        "2026-11-25T00:00:01",
        "--shard",
        "1/2",
        "-o",
        str(tmp_path / "e-{date}-{shard}.ndjson"),
        "--summary",
        str(tmp_path / "s-{date}-{shard}.json"),
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((tmp_path / "s-2026-11-25-1.json").read_bytes())
    assert summary["output"] == str(tmp_path / "e-2026-11-25-1.ndjson")
    assert summary["failures_file"] == str(tmp_path / "e-2026-11-25-1.failures.ndjson")
    assert summary["window"] == {
        "since": "2026-11-25T00:00:00+00:00",
        "until": "2026-11-25T00:00:01+00:00",
        "tz": "UTC",
    }
    assert summary["shard"] == "1/2"


def test_status_says_where_a_job_stands_and_changes_nothing(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join([*ids, "c-nosuchcall"]))
    out = tmp_path / "e.ndjson"
    assert run_harvester(sim_process, "status", "-o", str(out)).returncode == 2, "no job yet"
    run = ["run", "-i", str(tmp_path / "calls.txt"), "-o", str(out), "--no-progress"]
    assert run_harvester(sim_process, *run).returncode == 1
    state = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "e.ndjson.state").iterdir())

    done = run_harvester(sim_process, "status", "-o", str(out), "--json")

    assert done.returncode == 0, done.stderr
    status = orjson.loads(done.stdout)
    assert (status["calls"], status["ok"], status["failed"]) == (len(ids) + 1, len(ids), 1)
    assert status["failures_by_code"] == {"call-not-found": 1} and status["completed"]
    assert status["last_run"]["status"] == "completed" and status["last_run"]["ended_at"]
    assert status["running_pid"] is None
    text = run_harvester(sim_process, "status", "-o", str(out)).stdout
    assert b"completed" in text and b"running:   no" in text
    after = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "e.ndjson.state").iterdir())
    assert after == state, "status changed nothing"


def test_status_fills_a_templated_output_as_the_nightly_run_did(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    out = str(tmp_path / "e-{date}-{shard}.ndjson")
    nightly = ["--yesterday", "--tz", "America/New_York", "--shard", "1/2"]
    assert run_harvester(sim_process, "run", *nightly, "-o", out, "--no-progress").returncode == 0

    done = run_harvester({}, "status", "-o", out, *nightly, "--json")

    assert done.returncode == 0, done.stderr
    status = orjson.loads(done.stdout)
    assert status["shard"] == "1/2" and status["completed"]
    day = datetime.now(ZoneInfo("America/New_York")).date() - timedelta(days=1)
    assert status["output"] == str(tmp_path / f"e-{day.isoformat()}-1.ndjson")
    missing = run_harvester({}, "status", "-o", out, "--yesterday")
    assert missing.returncode == 2 and b"needs --shard" in missing.stderr


def test_status_names_the_harvester_running_the_job(tmp_path: Path) -> None:
    from harvester.store.journal import Journal

    out = tmp_path / "e.ndjson"
    journal = Journal.open({"events": out, "failures": tmp_path / "f.ndjson"}, {"input": "x"})
    journal.note_run(command="run", started_at="2026-11-27T01:00:00+00:00", status="running")
    try:
        done = run_harvester({}, "status", "-o", str(out), "--json")
        assert orjson.loads(done.stdout)["running_pid"] == os.getpid()
    finally:
        journal.close()
    text = run_harvester({}, "status", "-o", str(out)).stdout
    assert b"no end recorded" in text and b"running:   no" in text


@pytest.mark.parametrize(("flag", "code"), [([], 0), (["--fail-on-empty"], 7)])
def test_an_empty_call_list_is_said_plainly_and_can_fail_the_job(
    sim_process: dict[str, str], tmp_path: Path, flag: list[str], code: int
) -> None:
    (tmp_path / "calls.txt").write_text("")
    done = run_list(sim_process, tmp_path, "--summary", str(tmp_path / "s.json"), *flag)
    assert done.returncode == code, done.stderr
    assert b"holds no call at all" in done.stderr
    assert orjson.loads((tmp_path / "s.json").read_bytes())["exit_code"] == code

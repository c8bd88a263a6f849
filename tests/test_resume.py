"""Crash-safe resume: killed at any moment, run again, every event exactly once."""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import random
import signal
import sqlite3
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from harvester.errors import ConfigError, OutputError
from harvester.run.job import harvest
from harvester.sim.server import SimConfig, Simulator

from .conftest import (
    HARVESTER,
    FakeClock,
    Forked,
    assert_exactly_once,
    invocations,
    make_settings,
    opened,
    output_of,
    read_ndjson,
    run_harvester,
    sim_log,
    simulator_process,
    start_harvester,
    tiny_filesystem,
    wait_until,
    write_calls,
)

UNKNOWN = ["c-unknowncall000000000001", "c-unknowncall000000000002"]
HOSTILE = ["c-../../etc", "not-a-call"]


def committed_bytes(folder: Path, day: str, name: str) -> bytes:
    """The part of the nightly test's ``name`` file that its ledger says is committed."""
    ledger = folder / f"events-{day}.ndjson.gz.state" / "ledger.sqlite"
    path = folder / f"{name}-{day}.ndjson.gz"
    if not ledger.exists() or not path.exists():
        return b""
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    if row is None:
        return b""
    return path.read_bytes()[: orjson.loads(row[0])["sizes"][name]]


def underway(process: Forked, env: dict[str, str], before: int, answered: int) -> None:
    """Wait until ``process`` has a request with the simulator of ``env`` (past the ``before``
    exchanges it had when the process started) and ``answered`` of them answered 200."""

    def going() -> bool:
        exchanges = sim_log(env)[before:]
        return bool(exchanges) and sum(status == 200 for _, status, _ in exchanges) >= answered

    wait_until(lambda: process.poll() is not None or going(), "the run underway")
    assert process.poll() is None, "the run ended before it was underway"


def start_args(folder: Path) -> list[str]:
    return [
        *("run", "--input", str(folder / "calls.txt")),
        *("--output", str(folder / "out" / "events.ndjson")),
        *("--summary", str(folder / "summary.json"), "--no-progress"),
    ]


def start(env: dict[str, str], folder: Path, *extra: str) -> Forked:
    return start_harvester(env, *start_args(folder), *extra)


def finish(env: dict[str, str], folder: Path, *extra: str) -> tuple[int, bytes]:
    """The run of ``start_args(folder)`` to its end (in this process: what a resume needs is the
    state on disk, not a process), wide enough that the faulty simulator's retries overlap."""
    done = run_harvester(env, *start_args(folder), "--concurrency", "64", *extra)
    return done.returncode, done.stderr


def call_list(env: dict[str, str], folder: Path, calls: int | None = None) -> list[str]:
    """The registry (its first ``calls``), plus duplicates, unknown calls and hostile ids,
    written as the input."""
    ids = Path(env["IDS_FILE"]).read_text().split()[:calls]
    lines = [*ids, *ids[:5], *UNKNOWN, *HOSTILE]
    random.Random(3).shuffle(lines)
    (folder / "calls.txt").write_text("\n".join(lines) + "\n")
    return ids


def assert_each_outcome_once(folder: Path, ids: list[str]) -> None:
    """Every event of ``ids`` once in the output, and each unknown or hostile id listed once
    among the failures."""
    assert_exactly_once(folder / "out" / "events.ndjson", ids)
    failures = read_ndjson(folder / "out" / "events.failures.ndjson")
    assert Counter(f["callId"] for f in failures) == Counter([*UNKNOWN, *HOSTILE])


@pytest.fixture(scope="module")
def faulty_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A simulator that is slow enough to be killed mid-run, and misbehaves."""
    with simulator_process(
        tmp_path_factory.mktemp("faulty-sim"),
        "--calls",
        "400",
        "--latency",
        "0.004",
        "--fault",
        "503=0.05",
        "--fault",
        "reset=0.03",
        "--fault",
        "truncate=0.03",
        "--fault",
        "429=0.005",
        "--max-faults-per-call",
        "1",
    ) as env:
        yield env


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_every_event_exactly_once(
    faulty_sim: dict[str, str], tmp_path: Path
) -> None:
    ids = call_list(faulty_sim, tmp_path)
    rng = random.Random(int(os.environ.get("KILL_SEED", "11")))
    kills = 0
    for _ in range(8):
        before = invocations(tmp_path / "out" / "events.ndjson")
        process = start(
            faulty_sim,
            tmp_path,
            "--commit-every",
            "5",
            "--commit-interval",
            "0.05",
            "--concurrency",
            "6",
        )
        # Killed once it has opened the job, however slowly the machine starts a process.
        while invocations(tmp_path / "out" / "events.ndjson") == before:
            if process.poll() is not None:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        if process.poll() is not None:
            process.communicate()
            break
        process.kill()
        process.communicate()
        kills += 1
    code, stderr = finish(faulty_sim, tmp_path)

    assert code == 1, stderr  # the unknown and hostile ids are failures
    assert kills >= 5, "the run ended before it could be killed often enough"
    assert_each_outcome_once(tmp_path, ids)
    report = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert report["calls"] == len(ids) + len(UNKNOWN) + len(HOSTILE)
    assert report["ok"] == len(ids) and report["failed"] == 4
    assert report["invocations"] >= kills + 1, "every killed run had opened the job"


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_gracefully_and_the_next_run_completes(
    faulty_sim: dict[str, str], tmp_path: Path, signum: int, code: int
) -> None:
    ids = call_list(faulty_sim, tmp_path)
    before = len(sim_log(faulty_sim))
    process = start(faulty_sim, tmp_path, "--grace", "5")
    underway(process, faulty_sim, before, answered=10)  # calls done, to be counted
    process.send_signal(signum)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == code, stderr
    assert time.monotonic() - started < 5
    assert b"finishing calls in flight" in stderr
    report = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert report["status"] == "stopped" and report["job_completed"] is False
    assert b"grace period over" not in stderr, "calls on the wire were finished within grace"
    assert 0 < report["calls"] < len(ids)

    assert finish(faulty_sim, tmp_path)[0] == 1
    assert_each_outcome_once(tmp_path, ids)


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_stays_resumable(
    faulty_sim: dict[str, str], tmp_path: Path
) -> None:
    ids = call_list(faulty_sim, tmp_path)
    # The same registry, answering slowly: the first signal's grace has calls on the wire.
    (tmp_path / "slow-sim").mkdir()
    with simulator_process(tmp_path / "slow-sim", "--calls", "400", "--latency", "5") as slow:
        process = start(slow, tmp_path, "--grace", "60")
        underway(process, slow, 0, answered=0)  # a simulator of its own, for this run
        process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # the same one this soon would be the same request
        _, stderr = process.communicate(timeout=10)

    assert process.returncode == 130, stderr
    assert b"second signal" in stderr
    assert finish(faulty_sim, tmp_path)[0] == 1
    assert_each_outcome_once(tmp_path, ids)


@pytest.mark.slow
def test_gnu_timeout_signalling_the_process_and_its_group_is_one_graceful_stop(
    faulty_sim: dict[str, str], tmp_path: Path
) -> None:
    ids = call_list(faulty_sim, tmp_path, calls=150)
    # timeout sends TERM to the harvester, then to its whole process group at once; --rate
    # makes the run last longer than that, however slowly the machine starts it.
    args = [*start_args(tmp_path), "--grace", "5", "--rate", "20"]
    process = subprocess.Popen(
        ["timeout", "--preserve-status", "2", *HARVESTER, *args],
        env=faulty_sim,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 143, stderr
    assert b"second signal" not in stderr
    report = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert report["status"] == "stopped" and b"grace period over" not in stderr
    assert report["calls"] < len(ids), "the run was cut short"
    assert finish(faulty_sim, tmp_path)[0] == 1
    assert_each_outcome_once(tmp_path, ids)


def test_a_completed_run_run_again_changes_nothing(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids))
    assert finish(sim_process, tmp_path)[0] == 0
    output = tmp_path / "out" / "events.ndjson"
    before = output.read_bytes()
    first = orjson.loads((tmp_path / "summary.json").read_bytes())

    code, stderr = finish(sim_process, tmp_path)

    assert code == 0, stderr
    assert output.read_bytes() == before
    again = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert again["this_run"]["requests"] == 0
    assert (again["calls"], again["ok"], again["events"]) == (
        first["calls"],
        first["ok"],
        first["events"],
    )
    assert b"completed earlier" in stderr


def test_fresh_starts_over(sim_process: dict[str, str], tmp_path: Path) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids))
    assert finish(sim_process, tmp_path)[0] == 0

    assert finish(sim_process, tmp_path, "--fresh")[0] == 0

    report = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert report["invocations"] == 1 and report["this_run"]["requests"] == len(ids)
    assert_exactly_once(tmp_path / "out" / "events.ndjson", ids)


def test_another_input_is_refused_unless_fresh(sim_process: dict[str, str], tmp_path: Path) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids[:10]))
    assert finish(sim_process, tmp_path)[0] == 0
    (tmp_path / "calls.txt").write_text("\n".join(ids[10:20]))

    code, stderr = finish(sim_process, tmp_path)

    assert code == 2
    assert b"this output belongs to another run" in stderr and b"--fresh" in stderr
    assert_exactly_once(tmp_path / "out" / "events.ndjson", ids[:10])


def test_another_user_is_refused(sim_process: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "calls.txt").write_text("c-abc\n")
    assert finish(sim_process, tmp_path)[0] == 1

    code, stderr = finish({**sim_process, "CATAPULT_USER_ID": "u-someoneelse"}, tmp_path)

    assert code == 2
    assert b"user_id was" in stderr


def test_an_output_without_state_is_not_overwritten(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "calls.txt").write_text("c-abc\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "events.ndjson").write_text('{"precious": true}\n')

    code, stderr = finish(sim_process, tmp_path)

    assert code == 2
    assert b"holds no harvester state" in stderr
    assert (tmp_path / "out" / "events.ndjson").read_text() == '{"precious": true}\n'


def test_a_second_harvester_on_the_same_output_is_refused(
    faulty_sim: dict[str, str], tmp_path: Path
) -> None:
    call_list(faulty_sim, tmp_path)
    first = start(faulty_sim, tmp_path)
    try:
        opened(first, tmp_path / "out" / "events.ndjson")  # and holds the output's lock
        assert first.poll() is None
        code, stderr = finish(faulty_sim, tmp_path)
        assert code == 75, "already running: a code of its own, not a usage error's"
        assert f"another harvester (pid {first.pid})".encode() in stderr
    finally:
        first.kill()
        first.communicate()


async def test_a_write_error_stops_the_run_and_the_next_run_resumes_cleanly(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    settings = make_settings(sim, tmp_path, commit_calls=5, concurrency=2)
    syncs = 0

    def filling_disk(fd: int) -> None:
        """A disk that fills up: the third fsync of a file fails (the run's record and the
        first commit are through by then)."""
        nonlocal syncs
        if stat.S_ISREG(os.fstat(fd).st_mode):  # data, not a folder's entries
            syncs += 1
            if syncs > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)

    with pytest.raises(OutputError, match="No space left on device") as caught:
        await harvest(settings, clock=clock, fsync=filling_disk)
    assert str(output_of(settings)) in str(caught.value)
    written = output_of(settings).stat().st_size

    stats = await harvest(settings, clock=clock)  # the disk has room again

    assert 0 < stats.skipped < len(ids), "the first run's commits were kept"
    assert written > 0
    assert_exactly_once(output_of(settings), ids)
    assert stats.job["calls"] == stats.job["ok"] == len(ids)


def test_a_full_disk_exits_4_naming_the_path_and_resumes_once_space_is_back(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    with tiny_filesystem(tmp_path / "tiny", "512k") as mount:
        ids = Path(sim_process["IDS_FILE"]).read_text().split()
        (tmp_path / "calls.txt").write_text("\n".join(ids))
        output = mount / "events.ndjson"
        # Fill the filesystem but for room enough to open the ledger and commit a little.
        (mount / "ballast").write_bytes(b"x" * (512 - 120) * 1024)
        args = [
            "run",
            "-i",
            str(tmp_path / "calls.txt"),
            "-o",
            str(output),
            "--no-progress",
            "--commit-every",
            "3",
        ]
        done = run_harvester(sim_process, *args)
        assert done.returncode == 4, done.stderr
        assert b"No space left on device" in done.stderr or b"disk is full" in done.stderr
        assert str(mount).encode() in done.stderr
        assert output.stat().st_size > 0, "some commits went through before the disk filled"

        (mount / "ballast").unlink()
        done = run_harvester(sim_process, *args)
        assert done.returncode == 0, done.stderr
        assert_exactly_once(output, ids)


def test_a_corrupt_ledger_is_a_clear_error(sim_process: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "calls.txt").write_text("c-abc\n")
    state = tmp_path / "out" / "events.ndjson.state"
    state.mkdir(parents=True)
    (state / "ledger.sqlite").write_bytes(b"this is not a database" * 100)

    code, stderr = finish(sim_process, tmp_path)

    assert code == 2
    assert b"--fresh" in stderr


@pytest.mark.parametrize(("part", "page"), [("its calls", 3), ("its state", 2)])
def test_a_ledger_damaged_in_the_middle_is_exit_2_saying_what_and_how_to_start_over(
    sim_process: dict[str, str], tmp_path: Path, part: str, page: int
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids[:20]) + "\n")
    assert finish(sim_process, tmp_path)[0] == 0
    (tmp_path / "calls.txt").write_text("\n".join(ids) + "\n")  # grown: read through again
    ledger = tmp_path / "out" / "events.ndjson.state" / "ledger.sqlite"
    with sqlite3.connect(ledger) as db:  # tables made in order: meta on page 2, calls on 3
        assert db.execute("PRAGMA page_size").fetchone()[0] == 4096
    with ledger.open("r+b") as file:
        file.seek((page - 1) * 4096)
        file.write(random.Random(page).randbytes(4096))

    code, stderr = finish(sim_process, tmp_path)

    assert code == 2, stderr
    assert b"is damaged" in stderr and b"--fresh" in stderr and b"backup" in stderr, part
    assert b"Traceback" not in stderr and b"internal error" not in stderr
    code, stderr = finish(sim_process, tmp_path, "--fresh")
    assert code == 0, stderr
    assert_exactly_once(tmp_path / "out" / "events.ndjson", ids)


def test_a_state_folder_on_a_full_disk_from_the_start_is_exit_4(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    with tiny_filesystem(tmp_path / "full", "64k") as mount:
        with contextlib.suppress(OSError), (mount / "ballast").open("wb") as ballast:
            while True:  # every block taken
                ballast.write(b"x" * 4096)
                ballast.flush()
        (tmp_path / "calls.txt").write_text("c-abc\n")
        done = run_harvester(
            sim_process,
            *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(mount / "events.ndjson")),
            "--no-progress",
        )
        assert done.returncode == 4, done.stderr
        assert str(mount).encode() in done.stderr
        assert b"No space left on device" in done.stderr or b"disk is full" in done.stderr
        assert b"Traceback" not in done.stderr and b"internal error" not in done.stderr


@pytest.mark.slow
def test_a_nightly_gzip_run_killed_again_and_again_decompresses_to_every_event_once(
    faulty_sim: dict[str, str], tmp_path: Path
) -> None:
    # The same registry as the simulator process's: 400 calls over the three days before today.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    registry = Simulator(SimConfig(calls=400, days=3, anchor=today))
    ids = [r["id"] for r in registry.calls_between(today - timedelta(days=1), today)]
    output = tmp_path / "out" / "events-{date}.ndjson.gz"
    calls_output = tmp_path / "out" / "calls-{date}.ndjson.gz"
    args = [
        "run",
        "--yesterday",
        "-o",
        str(output),
        "--calls-output",
        str(calls_output),
        "--no-progress",
        "--commit-every",
        "4",
        "--commit-interval",
        "0.05",
        "--list-page-size",
        "50",
        "--concurrency",
        "2",
    ]
    day = (today - timedelta(days=1)).date().isoformat()
    rng = random.Random(5)
    kills = 0
    for _ in range(5):
        before = invocations(tmp_path / "out" / f"events-{day}.ndjson.gz")
        process = start_harvester(faulty_sim, *args, stderr=False)
        opened(process, tmp_path / "out" / f"events-{day}.ndjson.gz", before)
        time.sleep(rng.uniform(0.0, 0.4))
        if process.poll() is not None:
            break
        process.kill()
        process.wait()
        kills += 1
        # Whatever the kill interrupted, what the ledger vouches for is whole gzip of whole
        # lines, each once.
        for name in ("events", "calls"):
            text = gzip.decompress(committed_bytes(tmp_path / "out", day, name))
            assert text == b"" or text.endswith(b"\n")
            lines = text.splitlines()
            assert all(isinstance(orjson.loads(line), dict) for line in lines)
            assert len(lines) == len(set(lines))
    done = run_harvester(faulty_sim, *args, "--concurrency", "32")

    assert done.returncode == 0, done.stderr
    assert kills >= 3
    assert_exactly_once(tmp_path / "out" / f"events-{day}.ndjson.gz", ids)
    listed = gzip.decompress(
        (tmp_path / "out" / f"calls-{day}.ndjson.gz").read_bytes()
    ).splitlines()
    assert sorted(orjson.loads(x)["id"] for x in listed) == sorted(ids)


async def test_a_call_list_grown_at_its_end_is_the_same_job_going_on(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    calls = write_calls(tmp_path, ids[:10])
    settings = make_settings(sim, tmp_path)
    assert (await harvest(settings, clock=clock)).completed
    with calls.open("a") as more:  # a backfill list, appended to
        more.write("".join(f"{i}\n" for i in ids[10:15]))
    sim.log.clear()

    again = await harvest(settings, clock=clock)

    assert again.completed and again.ok == 5 and len(sim.requests) == 5
    assert_exactly_once(output_of(settings), ids[:15])
    calls.write_text(calls.read_text().replace(ids[0], ids[20]) + f"{ids[21]}\n")
    with pytest.raises(ConfigError, match="belongs to another run"):
        await harvest(settings, clock=clock)  # what it held changed: not the same list


async def test_a_last_line_without_its_newline_that_goes_on_is_not_growth(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    calls = tmp_path / "calls.txt"
    calls.write_text("\n".join(ids[:5]))  # no newline at the end
    settings = make_settings(sim, tmp_path)
    await harvest(settings, clock=clock)
    calls.write_text(calls.read_text() + "x\n" + ids[5] + "\n")  # its last id changed
    with pytest.raises(ConfigError, match="belongs to another run"):
        await harvest(settings, clock=clock)


async def test_reading_the_list_another_way_is_another_job(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.csv"
    calls.write_text("callId,otherId\n" + "".join(f"{i},{i}\n" for i in sim.call_ids()[:5]))
    await harvest(make_settings(sim, tmp_path, input=str(calls)), clock=clock)
    with pytest.raises(ConfigError, match="id_column"):
        await harvest(
            make_settings(sim, tmp_path, input=str(calls), id_column="otherId"), clock=clock
        )

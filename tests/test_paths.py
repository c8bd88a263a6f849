"""Two paths naming one file are refused before any request: nothing is overwritten, and two
names of one output (a symlink) share one lock."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harvester.errors import AlreadyRunning, ConfigError, OutputError
from harvester.run.job import harvest, retry_failed
from harvester.sim.server import Simulator
from harvester.store.journal import Journal

from .conftest import (
    HARVESTER,
    FakeClock,
    assert_exactly_once,
    make_settings,
    run_harvester,
    write_calls,
)


def files(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return {
        "input": tmp_path / "calls.txt",
        "output": out / "events.ndjson",
        "failures": out / "failures.ndjson",
        "summary": out / "summary.json",
    }


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"failures": "output"}, "--output and --failures name the same file"),
        ({"summary": "output"}, "--output and --summary name the same file"),
        ({"metrics_file": "output"}, "--output and --metrics-file name the same file"),
        ({"summary": "failures"}, "--failures and --summary name the same file"),
        ({"metrics_file": "summary"}, "--summary and --metrics-file name the same file"),
        ({"output": "input"}, "--output and --input name the same file"),
        ({"failures": "input"}, "--failures and --input name the same file"),
    ],
)
async def test_two_flags_naming_one_file_are_refused_before_anything_is_touched(
    sim: Simulator, clock: FakeClock, tmp_path: Path, flags: dict[str, str], message: str
) -> None:
    paths = files(tmp_path)
    write_calls(tmp_path, sim.call_ids()[:5])
    paths["output"].write_text("precious\n")
    given: dict[str, Any] = {"failures": paths["failures"], "summary": paths["summary"]}
    given.update({flag: paths[named] for flag, named in flags.items()})
    given.setdefault("output", paths["output"])
    before = {path: path.read_bytes() for path in paths.values() if path.exists()}

    with pytest.raises(ConfigError, match=message):
        await harvest(make_settings(sim, tmp_path, **given), clock=clock, fresh=True)

    assert sim.requests == []
    assert {path: path.read_bytes() for path in paths.values() if path.exists()} == before
    assert not (tmp_path / "out" / "events.ndjson.state").exists()


async def test_the_same_file_through_a_symlink_or_a_relative_path_is_the_same_file(
    sim: Simulator, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = files(tmp_path)
    write_calls(tmp_path, sim.call_ids()[:5])
    (tmp_path / "link.ndjson").symlink_to(paths["output"])
    os.link(paths["input"], tmp_path / "hard-link.txt")
    monkeypatch.chdir(tmp_path / "out")

    given: dict[str, Any]
    for given in (
        {"output": paths["output"], "failures": tmp_path / "link.ndjson"},
        {"output": paths["output"], "summary": Path("events.ndjson")},
        {"output": tmp_path / "hard-link.txt"},
    ):
        with pytest.raises(ConfigError, match="name the same file"):
            await harvest(make_settings(sim, tmp_path, **given), clock=clock)
    assert sim.requests == []


async def test_two_jobs_writing_one_file_through_symlinks_cannot_run_at_once(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, sim.call_ids()[:5])
    real = tmp_path / "real" / "events.ndjson"
    real.parent.mkdir()
    for name in ("a.ndjson", "b.ndjson"):
        (tmp_path / name).symlink_to(real)
    # The first job holds its output (as a running harvester does) ...
    holder = Journal.open(
        {"events": tmp_path / "a.ndjson", "failures": tmp_path / "a.failures.ndjson"},
        {"input": "x"},
    )
    try:
        # ... and the second, under another name of the same file, is refused.
        settings = make_settings(sim, tmp_path, output=tmp_path / "b.ndjson")
        with pytest.raises(AlreadyRunning, match="another harvester"):
            await harvest(settings, clock=clock)
    finally:
        holder.close()
    assert sim.requests == []
    assert (tmp_path / "real" / "events.ndjson.state" / "lock").exists()


@pytest.mark.parametrize("output", ["", ".", "{dir}", "{dir}/"])
async def test_an_output_that_is_no_file_is_refused(
    sim: Simulator, clock: FakeClock, tmp_path: Path, output: str
) -> None:
    write_calls(tmp_path, sim.call_ids()[:5])
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")

    with pytest.raises(ConfigError, match=r"empty|folder"):
        await harvest(
            make_settings(sim, tmp_path, output=output.format(dir=folder)), clock=clock, fresh=True
        )

    assert (folder / "keep.txt").read_text() == "keep"
    assert sim.requests == []


async def test_no_file_of_the_run_may_sit_in_the_state_folder(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, sim.call_ids()[:5])
    output = tmp_path / "events.ndjson"
    settings = make_settings(
        sim, tmp_path, output=output, summary=tmp_path / "events.ndjson.state" / "ledger.sqlite"
    )
    with pytest.raises(ConfigError, match="holds harvester's state"):
        await harvest(settings, clock=clock)


async def test_retry_failed_refuses_colliding_files_too(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, [*sim.call_ids()[:5], "c-unknown0000"])
    settings = make_settings(sim, tmp_path)
    await harvest(settings, clock=clock)
    assert settings.output is not None

    with pytest.raises(ConfigError, match="--output and --summary name the same file"):
        await retry_failed(make_settings(sim, tmp_path, summary=settings.output), clock=clock)


@pytest.mark.parametrize("flag", ["failures", "summary", "metrics_file"])
async def test_a_file_the_run_writes_must_be_a_regular_file(
    sim: Simulator, clock: FakeClock, tmp_path: Path, flag: str
) -> None:
    write_calls(tmp_path, sim.call_ids()[:5])
    fifo = tmp_path / "named.fifo"
    os.mkfifo(fifo)  # replacing it, or opening it to read, would hang or destroy it

    with pytest.raises(ConfigError, match="not a regular file"):
        await harvest(make_settings(sim, tmp_path, **{flag: str(fifo)}), clock=clock)

    assert fifo.is_fifo() and sim.requests == []


def test_stdin_redirected_from_the_output_is_the_same_file(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out.ndjson"
    out.write_text("precious\n")
    with out.open("rb") as stdin:
        done = subprocess.run(
            [*HARVESTER, "run", "-i", "-", "-o", str(out), "--fresh"],
            env=sim_process,
            stdin=stdin,  # a file, not bytes: stdin is the output itself
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2 and b"name the same file" in done.stderr, done.stderr
    assert out.read_text() == "precious\n"


async def test_an_empty_ledger_beside_an_output_does_not_make_it_ours(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, sim.call_ids()[:5])
    settings = make_settings(sim, tmp_path)
    assert settings.output is not None
    settings.output.parent.mkdir()
    settings.output.write_text('{"precious": 1}\n')
    (tmp_path / "out" / "events.ndjson.state").mkdir()
    (tmp_path / "out" / "events.ndjson.state" / "ledger.sqlite").write_bytes(b"")

    with pytest.raises(ConfigError, match="holds no harvester state"):
        await harvest(settings, clock=clock)

    assert settings.output.read_text() == '{"precious": 1}\n'


async def test_a_job_begun_through_a_symlink_by_an_earlier_version_resumes(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    ids = sim.call_ids()
    write_calls(tmp_path, ids)
    real, output = tmp_path / "real.ndjson", tmp_path / "link.ndjson"
    output.symlink_to(real)
    settings = make_settings(sim, tmp_path, output=output)
    await harvest(settings, clock=clock)
    # As an earlier version left it: the state beside the link, not beside the file.
    (tmp_path / "real.ndjson.state").rename(tmp_path / "link.ndjson.state")
    sim.log.clear()

    stats = await harvest(settings, clock=clock)

    assert stats.completed and sim.requests == [], "the job was found complete, not refused"


@pytest.mark.parametrize("key", ["summary", "metrics_file"])
async def test_a_summary_or_metrics_file_that_cannot_be_written_stops_the_run_before_it_starts(
    sim: Simulator, clock: FakeClock, tmp_path: Path, key: str
) -> None:
    write_calls(tmp_path, sim.call_ids()[:3])
    (tmp_path / "a-file").write_text("not a folder\n")
    settings = make_settings(sim, tmp_path, **{key: str(tmp_path / "a-file" / "s.json")})

    with pytest.raises(OutputError, match="is not a folder"):
        await harvest(settings, clock=clock)

    assert sim.requests == []


def test_fresh_through_a_symlinked_output_keeps_the_link_and_the_job_resumable(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()[:10]
    (tmp_path / "calls.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "events.ndjson").touch()
    link = tmp_path / "events.ndjson"
    link.symlink_to(Path("real") / "events.ndjson")
    args = ["run", "-i", str(tmp_path / "calls.txt"), "-o", str(link), "--no-progress"]

    fresh = run_harvester(sim_process, *args, "--fresh")
    again = run_harvester(sim_process, *args)

    assert (fresh.returncode, again.returncode) == (0, 0), again.stderr
    assert link.is_symlink(), "--fresh replaced the file it points at, not the link"
    assert b"completed earlier" in again.stderr
    assert_exactly_once(link, ids)

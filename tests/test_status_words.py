"""``harvester status`` in words: how the last run ended (completed, stopped, or failed with
its exit code, and why), how far a backfill got of how many, in the right plurals; and what a
run refused at the door leaves behind (nothing) and says (which setting differs)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harvester.errors import ApiUnavailable, FatalApiError
from harvester.run.job import harvest
from harvester.sim.server import Simulator
from harvester.store.status import job_status, status_lines

from .conftest import (
    At,
    FakeClock,
    make_settings,
    output_of,
    run_harvester,
    tiny_filesystem,
    write_calls,
)


def status_text(output: Path) -> str:
    return "\n".join(status_lines(job_status(output)))


async def test_a_run_the_api_refused_says_exit_3_and_why(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, sim.call_ids()[:5])
    sim.config.secret = "another-secret"
    settings = make_settings(sim, tmp_path)
    with pytest.raises(FatalApiError):
        await harvest(settings, clock=clock)

    text = status_text(output_of(settings))

    assert "progress:  0 calls done (the input holds 5 records): 0 ok, 0 failed; 0 events" in text
    assert "ended 20" in text and " (1 run in all)\n" in text
    assert "\noutcome:   failed with exit code 3 (aborted): the API refused the run" in text
    assert "\nwhy:       401 user-access-denied: " in text, text


async def test_an_api_that_cannot_be_reached_says_exit_6_and_why(
    clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, ["c-abc0000000000000000001", "c-abc0000000000000000002"])
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(At(f"http://127.0.0.1:{port}"), tmp_path)
    with pytest.raises(ApiUnavailable):
        await harvest(settings, clock=clock)

    text = status_text(output_of(settings))

    outcome = "\noutcome:   failed with exit code 6 (api-unavailable): the API could not be reached"
    assert outcome in text, text
    assert "\nwhy:       " in text and f"127.0.0.1:{port}" in text, text
    assert not re.search(r"\b401\b", text), "not taken for refused credentials"


async def test_a_backfill_whose_input_changed_says_its_total_is_not_known(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    calls = write_calls(tmp_path, sim.call_ids()[:5])
    sim.config.secret = "another-secret"
    settings = make_settings(sim, tmp_path)
    with pytest.raises(FatalApiError):
        await harvest(settings, clock=clock)
    with calls.open("a") as more:
        more.write(f"{sim.call_ids()[5]}\n")

    text = status_text(output_of(settings))

    assert "0 calls done (total not known until the input is read to its end)" in text, text


async def test_a_completed_run_says_completed_in_the_right_plurals(
    sim: Simulator, clock: FakeClock, tmp_path: Path
) -> None:
    write_calls(tmp_path, sim.call_ids()[:1])
    settings = make_settings(sim, tmp_path)
    await harvest(settings, clock=clock)

    text = status_text(output_of(settings))

    assert "progress:  1 call done: 1 ok, 0 failed;" in text, text
    assert " (1 run in all)\noutcome:   completed\n" in text and "why:" not in text


@contextlib.contextmanager
def full_filesystem(mount: Path, size: str, room: int) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mount``, filled but for ``room`` bytes, for the block."""
    with tiny_filesystem(mount, size):
        free = os.statvfs(mount)
        (mount / "ballast").write_bytes(b"x" * (free.f_bavail * free.f_frsize - room))
        yield mount


def test_a_run_that_filled_the_disk_says_it_ended_with_an_output_error_exit_4(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids))
    with full_filesystem(tmp_path / "tiny", "512k", 120 * 1024) as mount:
        output = mount / "events.ndjson"
        args = ["-i", str(tmp_path / "calls.txt"), "-o", str(output), "--no-progress"]
        done = run_harvester(sim_process, "run", *args, "--commit-every", "3")
        assert done.returncode == 4, done.stderr

        shown = run_harvester(sim_process, "status", "-o", str(output))

        text = shown.stdout.decode()
        assert shown.returncode == 0, shown.stderr
        assert "no end recorded" not in text, text
        outcome = "failed with exit code 4 (output-error): an output file or the ledger could not"
        assert f"\noutcome:   {outcome} be written\n" in text, text
        # Said whether the ledger could record that end on the full disk or not (the record
        # beside it, made its full size at the start, always can).
        assert "\nwhy:       " in text and str(mount) in text

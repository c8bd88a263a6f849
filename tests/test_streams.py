"""A call list through a pipe, a FIFO, /dev/stdin or process substitution: every call, read
once, as it comes; the event loop never blocks on it, and a signal still stops the run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from harvester.cli import commands as cli
from harvester.input.chunks import count_records
from harvester.report import progress

from .conftest import (
    HARVESTER,
    Forked,
    assert_exactly_once,
    point_at,
    read_ndjson,
    run_harvester,
    simulator_process,
    start_harvester,
    wait_until,
)

IDS = [f"c-stream{i:05d}" for i in range(1000)]


@pytest.fixture(scope="module")
def open_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A simulator where every well-formed call id exists."""
    with simulator_process(tmp_path_factory.mktemp("open-world"), "--open-world") as env:
        yield env


def run(
    env: dict[str, str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return run_harvester(env, "run", *args, stdin=stdin)


def assert_every_call_once(tmp_path: Path, summary: Path | None = None) -> None:
    assert_exactly_once(tmp_path / "out.ndjson", IDS)
    if summary is not None:
        report = orjson.loads(summary.read_bytes())
        assert (report["status"], report["ok"], report["failed"]) == ("completed", 1000, 0)


@pytest.mark.slow
def test_process_substitution_gives_every_call(open_world: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("\n".join(IDS) + "\n")
    summary = tmp_path / "summary.json"
    # Progress on (off a terminal: log lines), as a user would run it: counting the input for
    # the progress total must not eat the pipe.
    command = (
        f"{sys.executable} -m harvester run --input <(cat {tmp_path / 'ids.txt'}) "
        f"-o {tmp_path / 'out.ndjson'} --summary {summary}"
    )

    done = subprocess.run(
        ["bash", "-c", command], env=open_world, capture_output=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert_every_call_once(tmp_path, summary)


@pytest.mark.slow
def test_dev_stdin_from_a_pipe_gives_every_call(open_world: dict[str, str], tmp_path: Path) -> None:
    done = run(
        open_world,
        "--input",
        "/dev/stdin",
        "-o",
        str(tmp_path / "out.ndjson"),
        stdin=("\n".join(IDS) + "\n").encode(),
    )
    assert done.returncode == 0, done.stderr
    assert_every_call_once(tmp_path)


def test_a_named_fifo_gives_every_call(open_world: dict[str, str], tmp_path: Path) -> None:
    fifo = tmp_path / "calls.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=("\n".join(IDS) + "\n",))
    writer.start()
    done = run(open_world, "--input", str(fifo), "-o", str(tmp_path / "out.ndjson"))
    writer.join()
    assert done.returncode == 0, done.stderr
    assert_every_call_once(tmp_path)


def until_written(output: Path, never: str) -> None:
    """Wait until something is committed to ``output``; fail saying ``never`` after 20 s."""
    deadline = time.monotonic() + 20
    while not (output.exists() and output.stat().st_size > 0):
        assert time.monotonic() < deadline, never
        time.sleep(0.05)


def waiting_for_a_writer(process: Forked) -> None:
    """Until a thread of ``process`` waits in a FIFO's open(), which Linux names in /proc.
    Where the kernel does not say (every wait reads "0", or there is no /proc) for seconds, a
    few seconds more instead: nothing else shows that wait from outside the process."""
    hidden_after = time.monotonic() + 3
    waits: list[str] = []

    def waiting() -> bool:
        waits.clear()
        for task in Path(f"/proc/{process.pid}/task").glob("*"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                waits.append(task.joinpath("wchan").read_text(errors="replace"))
        hidden = all(wait == "0" for wait in waits) and time.monotonic() > hidden_after
        return "wait_for_partner" in waits or hidden

    wait_until(waiting, "a thread of the run waiting in the FIFO's open()", timeout=20)
    if "wait_for_partner" not in waits:
        time.sleep(2.0)  # the kernel does not say: give the run time to reach that wait


@pytest.mark.slow
def test_a_fifo_nobody_writes_to_still_stops_on_sigterm_and_resumes_later(
    open_world: dict[str, str], tmp_path: Path
) -> None:
    fifo = tmp_path / "calls.fifo"
    os.mkfifo(fifo)
    summary = tmp_path / "summary.json"
    args = ["--input", str(fifo), "-o", str(tmp_path / "out.ndjson"), "--summary", str(summary)]
    process = start_harvester(open_world, "run", *args)
    waiting_for_a_writer(process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)

    assert process.returncode == 143, stderr
    assert orjson.loads(summary.read_bytes())["status"] == "stopped"

    writer = threading.Thread(target=fifo.write_text, args=("\n".join(IDS) + "\n",))
    writer.start()
    done = run(open_world, *args)
    writer.join()
    assert done.returncode == 0, done.stderr
    assert_every_call_once(tmp_path, summary)


def test_calls_from_a_slow_pipe_are_harvested_as_they_come(
    open_world: dict[str, str], tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [
            *(*HARVESTER, "run", "-i", "-"),
            *("-o", str(tmp_path / "out.ndjson"), "--commit-interval", "0.2"),
        ],
        env=open_world,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(b"c-first\nc-second\n")
    process.stdin.flush()
    output = tmp_path / "out.ndjson"
    # Committed while the pipe is still open and the list unfinished.
    until_written(output, "two calls waiting on a half-empty batch")
    process.stdin.close()
    assert process.wait(timeout=20) == 0
    assert process.stderr is not None
    process.stderr.close()
    assert {e["callId"] for e in read_ndjson(output)} == {"c-first", "c-second"}


def test_a_stdin_that_never_ends_still_stops_on_sigterm_at_once(
    open_world: dict[str, str], tmp_path: Path
) -> None:
    summary = tmp_path / "summary.json"
    process = subprocess.Popen(
        [
            *(*HARVESTER, "run", "-i", "-", "--summary", str(summary)),
            *("-o", str(tmp_path / "out.ndjson"), "--commit-interval", "0.2"),
        ],
        env=open_world,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stderr is not None
    process.stdin.write(b"c-first\n")
    process.stdin.flush()
    output = tmp_path / "out.ndjson"
    until_written(output, "the first call never came through")

    # The input thread is blocked in a read that will never return; stdin stays open.
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    waited = time.monotonic() - started

    process.stdin.close()
    stderr = process.stderr.read()
    process.stderr.close()
    assert code == 143, stderr
    assert waited < 5, f"{waited:.1f} s to stop"
    assert orjson.loads(summary.read_bytes())["status"] == "stopped"


def test_counting_for_the_progress_total_never_opens_a_fifo_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "calls.fifo"
    os.mkfifo(fifo)
    # As if the file became a FIFO between is_stream's look and the count's open.
    monkeypatch.setattr("harvester.input.chunks.is_stream", lambda spec: False)
    counts: list[int | None] = []
    counting = threading.Thread(target=lambda: counts.append(count_records(str(fifo))))
    counting.daemon = True  # if it is stuck in open(), the test still ends
    counting.start()
    counting.join(5)
    assert not counting.is_alive() and counts == [None]


def test_the_progress_total_is_counted_only_with_progress_on(
    sim_process: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()[:3]
    (tmp_path / "calls.txt").write_text("\n".join(ids) + "\n")
    for name in ("CATAPULT_BASE_URL", "CATAPULT_USER_ID", "CATAPULT_API_TOKEN"):
        monkeypatch.setenv(name, sim_process[name])
    monkeypatch.setenv("CATAPULT_API_SECRET", sim_process["CATAPULT_API_SECRET"])
    monkeypatch.setattr("harvester.logs.configure", lambda *args: None)  # pytest's logging stays
    counted: list[str | None] = []

    def count(spec: str | None) -> int:
        counted.append(spec)
        return 3

    monkeypatch.setattr(progress, "count_records", count)
    run = ["run", "-i", str(tmp_path / "calls.txt"), "--log-every", "60"]

    assert cli.main([*run, "-o", str(tmp_path / "a.ndjson"), "--no-progress"]) == 0
    assert counted == []  # no second pass over the input when nobody shows a total
    assert cli.main([*run, "-o", str(tmp_path / "b.ndjson")]) == 0
    assert counted == [str(tmp_path / "calls.txt")]


def test_a_long_count_does_not_hold_the_end_of_a_run(
    sim_process: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_at(sim_process, monkeypatch)
    (tmp_path / "calls.txt").write_text(
        "\n".join(Path(sim_process["IDS_FILE"]).read_text().split()[:3])
    )
    released = threading.Event()
    monkeypatch.setattr(progress, "count_records", lambda spec: released.wait(30) and None)
    timer = threading.Timer(5.0, released.set)  # a count of a big gzip file, say
    timer.start()
    try:
        started = time.monotonic()
        code = cli.main(
            ["run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "e.ndjson")]
        )
        took = time.monotonic() - started
    finally:
        released.set()
        timer.cancel()
    assert code == 0
    assert took < 4, f"the run's end waited {took:.1f} s for the count"

"""What a person reads of a run: the bar on a terminal, the log lines off one, the summary line,
and what a signal does to them (issue 20, "What a new user met")."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import orjson
import pytest

from harvester import logs
from harvester.report.progress import Progress
from harvester.run.stopper import Stopper
from harvester.sim.server import events_for
from harvester.stats import RunStats

from .conftest import (
    HARVESTER,
    FakeClock,
    assert_exactly_once,
    in_flight,
    opened,
    run_harvester,
    simulator_process,
    start_harvester,
    wait_until,
)

# Off a terminal, a text line starts with the local time: ``2026-12-01T03:04:05+01:00 ``.
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d "


class Terminal(io.StringIO):
    """A terminal's stderr, as far as harvester can tell."""

    def isatty(self) -> bool:
        return True


def shown(stream: io.StringIO) -> list[str]:
    """The lines a terminal shows of what was written: each redraw of the bar is one."""
    return lines_of(stream.getvalue())


def lines_of(text: str) -> list[str]:
    """``text`` as a terminal shows it, a line each redraw (cursor moves left out)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


@contextlib.contextmanager
def logged(stream: TextIO, log_format: str = "text") -> Iterator[None]:
    """harvester's log configured as a run does it, onto ``stream`` as its stderr."""
    saved = logs.log.handlers[:], logs.log.level, logs.log.propagate
    try:
        with contextlib.redirect_stderr(stream):
            logs.configure(log_format)
            yield
    finally:
        logs.log.handlers[:], logs.log.level, logs.log.propagate = saved


# -- 1. a resumed run's pace ---------------------------------------------------------------


def resumed() -> tuple[RunStats, FakeClock]:
    """A run that resumed a job at 128,000 of its calls (done by earlier runs)."""
    return RunStats(skipped=128_000, events_before=881_000), FakeClock()


def ten_seconds_of(stats: RunStats, clock: FakeClock) -> None:
    """What the resumed run does in its first 10 s: 24,000 calls fetched."""
    clock.now += 10
    stats.ok, stats.failed, stats.events = 23_990, 10, 168_000
    stats.job = {"events": 1_000_000}  # as last committed, a commit behind what is written


def on_a_terminal(stats: RunStats, stream: TextIO, clock: FakeClock, columns: int) -> Progress:
    """The progress of a list of 1,000,000 records, on a terminal ``columns`` wide."""
    return Progress(
        stats,
        stream,
        show=True,
        log_every=30,
        metrics_file=None,
        total=1_000_000,
        clock=clock,
        columns=lambda: columns,
    )


def test_after_a_resume_the_bar_goes_at_this_runs_pace_from_where_the_job_stands() -> None:
    stats, clock = resumed()
    stream = Terminal()
    progress = on_a_terminal(stats, stream, clock, 140)
    ten_seconds_of(stats, clock)
    progress.draw()
    progress.finish(5)

    line = shown(stream)[-1]
    assert "152000/1000000" in line, line  # the job's position
    # 24,000 calls fetched in 10 s; 848,000 to go at that pace is 5 min 53 s.
    assert "2400 calls/s" in line and "ETA 05:53" in line, line
    assert "events=1049000" in line, "the job's events, as the count is the job's"


def test_after_a_resume_the_log_line_says_the_same_pace_and_a_readable_eta() -> None:
    stats, clock = resumed()
    stream = io.StringIO()
    progress = Progress(
        stats, stream, show=True, log_every=30, metrics_file=None, total=1_000_000, clock=clock
    )
    ten_seconds_of(stats, clock)
    with logged(stream):
        progress.log_line()
    assert re.fullmatch(
        STAMP + r"harvester: progress: 152000/1000000 records \(128000 done earlier\) "
        r"\(2400\.0 calls/s, ETA 05:53\), 1049000 events, 0 retries, 0 429s, 10 failed\n",
        stream.getvalue(),
    ), stream.getvalue()

    json = io.StringIO()
    with logged(json, "json"):
        progress.log_line()
    record = orjson.loads(json.getvalue())
    assert "ETA 05:53" in record["message"] and record["eta_s"] == 353
    assert (record["done"], record["total"], record["events"]) == (152_000, 1_000_000, 1_049_000)


# -- 2. no known total ---------------------------------------------------------------------


def test_without_a_total_the_bar_counts_and_makes_up_no_percentage() -> None:
    stats, clock = resumed()
    stream = Terminal()
    progress = Progress(
        stats, stream, show=True, log_every=30, metrics_file=None, clock=clock, columns=lambda: 80
    )
    ten_seconds_of(stats, clock)
    progress.draw()
    progress.finish(0)

    line = shown(stream)[-1]
    assert "152000 done" in line and "2400 calls/s" in line, line
    assert "%" not in line and "/1" not in line and "ETA" not in line, line

    plain = io.StringIO()
    with logged(plain):
        Progress(stats, plain, show=True, log_every=30, metrics_file=None).log_line()
    assert "progress: 152000 records (128000 done earlier)" in plain.getvalue()


def test_reading_stdin_on_an_80_column_terminal(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    """What a person at a terminal reads of ``... | harvester run -i -``: a count with no
    made-up total, the bar within the terminal's 80 columns, log lines without a time."""
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    lines = terminal_run(
        sim_process,
        ["run", "-i", "-", "-o", str(tmp_path / "e.ndjson"), "--rate", "20"],
        stdin="\n".join(ids).encode(),
        columns=80,
    )

    bars = [line for line in lines if " done " in line]
    assert bars, lines
    assert not [line for line in bars if "%" in line or f"/{len(ids)}" in line], bars
    assert f"{len(ids)} done" in bars[-1] and "failed=0" in bars[-1], bars
    assert all(len(line.rstrip()) <= 80 for line in bars), bars  # (log lines wrap: not cut)
    said = [line for line in lines if "harvester:" in line]
    assert said and all(line.startswith("harvester: ") for line in said), said
    assert said[-1].startswith(f"harvester: {len(ids)} calls: {len(ids)} ok, 0 failed;")


def terminal_run(env: dict[str, str], args: list[str], *, stdin: bytes, columns: int) -> list[str]:
    """``harvester ARGS`` with its stderr on a terminal ``columns`` wide: the lines shown."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO: the terminal's last writer has gone
            while chunk := os.read(master, 65536):
                chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        done = subprocess.run(
            [*HARVESTER, *args],
            env=env,
            input=stdin,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            timeout=60,
            check=False,
        )
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    assert done.returncode == 0, b"".join(chunks)
    return lines_of(b"".join(chunks).decode())


# -- 3. log lines off a terminal; JSON logs ------------------------------------------------


def calls(env: dict[str, str], folder: Path, *extra: str) -> Path:
    ids = Path(env["IDS_FILE"]).read_text().split()
    (folder / "calls.txt").write_text("\n".join([*ids, *extra]) + "\n")
    return folder / "calls.txt"


def test_off_a_terminal_every_line_says_when(sim_process: dict[str, str], tmp_path: Path) -> None:
    listed = calls(sim_process, tmp_path)
    done = run_harvester(sim_process, "run", "-i", str(listed), "-o", str(tmp_path / "e.ndjson"))
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 0 and lines, done.stderr
    assert all(re.match(STAMP + "harvester: ", line) for line in lines), lines


@pytest.mark.parametrize(
    ("unknown", "flags", "code", "level"),
    [
        ([], [], 0, "info"),
        (["c-nosuchcall"], [], 1, "warning"),  # finished; the failures file says which
        ([], ["--rate", "20", "--max-duration", "0.3s"], 5, "info"),  # a stop asked for
    ],
)
def test_the_json_summarys_level_follows_the_exit(
    sim_process: dict[str, str],
    tmp_path: Path,
    unknown: list[str],
    flags: list[str],
    code: int,
    level: str,
) -> None:
    listed = calls(sim_process, tmp_path, *unknown)
    done = run_harvester(
        sim_process,
        *("run", "-i", str(listed), "-o", str(tmp_path / "e.ndjson"), *flags),
        *("--log-format", "json", "--no-progress"),
    )
    assert done.returncode == code, done.stderr
    summary = orjson.loads(done.stderr.splitlines()[-1])
    assert summary["event"] == "summary" and summary["level"] == level


def test_under_systemd_the_journal_stamps_the_lines_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w") as journal:
        found = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{found.st_dev}:{found.st_ino}")
        with logged(journal):
            logs.log.info("said")
    assert (tmp_path / "journal").read_text() == "harvester: said\n"


def test_a_summary_is_said_at_the_level_of_its_exit() -> None:
    levels = {code: logs.summary_level(code) for code in (0, 1, 2, 3, 4, 5, 6, 7, 70, 75, 130, 143)}
    assert [code for code, level in levels.items() if level == logging.INFO] == [0, 5, 130, 143]
    assert levels[1] == logging.WARNING
    assert {levels[code] for code in (2, 3, 4, 6, 7, 70, 75)} == {logging.ERROR}


# -- 4. an 80-column terminal; ^C ----------------------------------------------------------


@pytest.mark.parametrize("columns", [80, 60])
def test_the_bar_fits_the_terminal_with_what_matters(columns: int) -> None:
    clock = FakeClock()
    stats = RunStats(skipped=100_000, night="2026-12-01")
    stream = Terminal()
    progress = on_a_terminal(stats, stream, clock, columns)
    clock.now += 12
    stats.ok, stats.failed, stats.events = 27_666, 1_234, 115_808
    stats.retries, stats.rate_limited = 12_345, 678
    progress.draw()
    progress.finish(5)

    line = shown(stream)[-1]
    assert len(line) <= columns, line
    # 28,900 calls in 12 s; 871,100 to go at that pace is 6 min 1 s.
    assert "128900/1000000" in line and "2408" in line and "ETA 06:01" in line, line
    assert "failed=1234" in line and "2026-12-01" in line, line
    if columns == 80:
        assert " 13%|" in line and "calls/s" in line, "room for the bar and the rate's unit"


def test_a_wide_terminal_has_room_for_everything() -> None:
    stats = RunStats(ok=90, failed=1, events=700, retries=3, rate_limited=2)
    stream = Terminal()
    progress = Progress(
        stats, stream, show=True, log_every=30, metrics_file=None, total=100, columns=lambda: 200
    )
    progress.draw()
    line = shown(stream)[-1]
    assert len(line) <= 200
    for field in ("91/100", "calls/s", "failed=1", "events=700", "retries=3", "429s=2"):
        assert field in line, line


def test_after_ctrl_c_the_terminal_echo_is_not_glued_to_what_is_said() -> None:
    terminal = Terminal()
    terminal.write("harvester  13%|██   | 128878/1000000 2407 calls/s")  # the bar, as it stood
    with logged(terminal):
        Stopper(grace=10, stream=terminal).on_signal(signal.SIGINT)
    assert terminal.getvalue().endswith(
        "calls/s\nharvester: SIGINT: finishing calls in flight (up to 10 s), then committing; "
        "signal again to stop at once\n"
    ), terminal.getvalue()

    file = io.StringIO()  # off a terminal: nothing was echoed, and no empty line is added
    with logged(file):
        Stopper(grace=10, stream=file).on_signal(signal.SIGINT)
    assert re.fullmatch(STAMP + "harvester: SIGINT: [^\n]*\n", file.getvalue())


# -- 5, 6. the summary line ----------------------------------------------------------------


def test_a_stopped_runs_summary_says_how_many_calls_remain(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    listed = calls(sim_process, tmp_path)
    total = len(listed.read_text().split())
    args = ["run", "-i", str(listed), "-o", str(tmp_path / "e.ndjson")]
    summary = ("--summary", str(tmp_path / "s.json"))
    stopped = run_harvester(sim_process, *args, "--rate", "20", "--max-duration", "0.5s", *summary)

    assert stopped.returncode == 5, stopped.stderr
    report = orjson.loads((tmp_path / "s.json").read_bytes())
    run = report["this_run"]
    left = total - run["ok"] - run["failed"] - run["skipped"] - run["duplicates"]
    assert 0 < left < total and report["remaining"] == left
    line = stopped.stderr.decode().splitlines()[-1]
    assert line.endswith(f"; exit 5; at most {left} calls to go, the next run goes on from here"), (
        line
    )

    finished = run_harvester(sim_process, *args, *summary)
    assert finished.returncode == 0
    assert "to go" not in finished.stderr.decode() and "goes on" not in finished.stderr.decode()
    assert orjson.loads((tmp_path / "s.json").read_bytes())["remaining"] is None


def test_a_stopped_stream_says_the_next_run_goes_on(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    stopped = run_harvester(
        sim_process,
        *("run", "-i", "-", "-o", str(tmp_path / "e.ndjson")),
        *("--rate", "20", "--max-duration", "0.5s"),
        stdin="\n".join(ids).encode(),
    )
    assert stopped.returncode == 5, stopped.stderr
    line = stopped.stderr.decode().splitlines()[-1]
    assert line.endswith("; exit 5; the next run goes on from here"), line


def test_one_call_one_request_in_the_singular(sim_process: dict[str, str], tmp_path: Path) -> None:
    first = Path(sim_process["IDS_FILE"]).read_text().split()[0]
    (tmp_path / "calls.txt").write_text(first + "\n")
    done = run_harvester(
        sim_process, "run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "e.ndjson")
    )
    assert done.returncode == 0, done.stderr
    events = len(events_for(first))
    assert re.search(
        f"harvester: 1 call: 1 ok, 0 failed; {events} events?; 1 request, 0 retries, "
        r"0 rate-limited; \d+\.\d s; exit 0$",
        done.stderr.decode().splitlines()[-1],
    ), done.stderr


# -- 7. two signals in a row ---------------------------------------------------------------


def test_stopping_at_once_is_said_in_the_logs_format() -> None:
    exited: list[int] = []
    said = io.StringIO()
    with logged(said, "json"):
        stopper = Stopper(grace=10, exit_now=exited.append, stream=said)
        stopper.on_signal(signal.SIGTERM)
        stopper.on_signal(signal.SIGINT)
    first, second = (orjson.loads(line) for line in said.getvalue().splitlines())
    assert first["level"] == "info" and "finishing calls in flight" in first["message"]
    assert second["event"] == "stopping-now" and second["exit_code"] == 130
    assert second["message"] == "second signal: stopping now (resumable)"
    assert exited == [130]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_two_signals_50_ms_apart_exit_with_our_code_and_lose_nothing(
    sim_process: dict[str, str], tmp_path: Path, signum: int, code: int
) -> None:
    """A second signal forces a faster stop, however soon it comes after the first and
    wherever the run is then (finishing its calls, writing its summary, exiting): the process
    exits 128 + the signal, never killed by the signal itself; the next run loses nothing."""
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    listed = calls(sim_process, tmp_path)
    output = tmp_path / "out" / "events.ndjson"
    args = ["run", "-i", str(listed), "-o", str(output), "--no-progress"]
    process = start_harvester(sim_process, *args, "--rate", "20")
    opened(process, output)
    time.sleep(0.15)
    process.send_signal(signum)
    time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == code, stderr
    shown = run_harvester(sim_process, "status", "-o", str(output)).stdout.decode()
    # Stopped, however soon: its record says so (not "killed"), and how the next run goes on.
    assert "no end recorded" not in shown and "stopped" in shown, shown
    again = run_harvester(sim_process, *args)
    assert again.returncode == 0, again.stderr
    assert_exactly_once(output, ids)


def test_a_retry_names_its_call_as_a_failure_does(tmp_path: Path) -> None:
    """In JSON logs, ``retry`` and ``call-failed`` name the call the same way (``call_id``)."""
    (tmp_path / "sim").mkdir()
    with simulator_process(tmp_path / "sim", "--calls", "10", "--fault", "503=0.5") as env:
        ids = Path(env["IDS_FILE"]).read_text().split()
        (tmp_path / "calls.txt").write_text("\n".join([*ids, "c-nosuchcall"]) + "\n")
        done = run_harvester(
            env,
            *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "e.ndjson")),
            *("--log-format", "json", "--verbose", "--no-progress", "--max-attempts", "8"),
        )
    records = [orjson.loads(line) for line in done.stderr.splitlines()]
    retries = [r for r in records if r["event"] == "retry"]
    failed = [r for r in records if r["event"] == "call-failed"]
    assert retries and failed
    assert all(r["call_id"] in ids and "target" not in r for r in retries)
    assert all("call_id" in r for r in failed)
    # At what they mean: a retry is news, a call given up a warning.
    assert {r["level"] for r in retries} == {"info"}
    assert {r["level"] for r in failed} == {"warning"}


def test_a_run_stopped_at_once_says_so_in_status_not_killed(tmp_path: Path) -> None:
    """A second signal while calls are still in flight exits at once: what was committed
    stands, and ``status`` says the run was stopped, with its exit code, not that it has no
    end recorded (killed, or the machine went down)."""
    (tmp_path / "sim").mkdir()
    with simulator_process(tmp_path / "sim", "--calls", "20", "--latency", "3") as env:
        listed = tmp_path / "calls.txt"
        listed.write_text(Path(env["IDS_FILE"]).read_text())
        output = tmp_path / "out" / "events.ndjson"
        args = ["run", "-i", str(listed), "-o", str(output), "--no-progress"]
        process = start_harvester(env, *args, "--concurrency", "4")
        opened(process, output)
        wait_until(lambda: in_flight(env) >= 4, "four calls in flight, each answered in 3 s")
        process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 143, stderr
        assert b"second signal: stopping now" in stderr

        shown = run_harvester(env, "status", "-o", str(output)).stdout.decode()
    assert "no end recorded" not in shown, shown
    assert "stopped at once by a second signal" in shown and "143" in shown, shown

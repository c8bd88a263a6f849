"""Watching a run: progress off and on a terminal, JSON logs, the metrics file."""

from __future__ import annotations

import io
import re
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harvester import __version__
from harvester.input.chunks import count_records
from harvester.report.progress import Progress
from harvester.sim.server import SIM_SECRET
from harvester.stats import RunStats

from .conftest import run_harvester

# Off a terminal, a text line starts with the local time: ``2026-12-01T03:04:05+01:00 ``.
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d "


def run(env: dict[str, str], folder: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    ids = Path(env["IDS_FILE"]).read_text().split()
    (folder / "calls.txt").write_text("\n".join([*ids, "c-nosuchcall"]))
    return run_harvester(
        env, "run", "-i", str(folder / "calls.txt"), "-o", str(folder / "e.ndjson"), *extra
    )


@pytest.mark.slow
def test_off_a_terminal_a_progress_line_comes_every_log_every_seconds(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    done = run(sim_process, tmp_path, "--rate", "40", "--log-every", "0.2")
    lines = [line for line in done.stderr.splitlines() if b"progress:" in line]
    assert done.returncode == 1, done.stderr
    assert len(lines) >= 3
    assert re.match(STAMP.encode() + b"harvester: progress: ", lines[-1]), lines[-1]
    assert b"/41 records (0 done earlier) (" in lines[-1]
    assert b"events" in lines[-1] and b"429s" in lines[-1]


@pytest.mark.slow
def test_json_logs_are_json_with_events_and_never_a_secret(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    done = run(
        sim_process,
        tmp_path,
        "--rate",
        "40",
        "--log-every",
        "0.2",
        "--log-format",
        "json",
        "--verbose",
    )
    records = [orjson.loads(line) for line in done.stderr.splitlines()]
    events = {r["event"] for r in records}
    assert {"progress", "call-failed", "summary"} <= events
    for record in records:
        assert {"time", "level", "event", "message"} <= record.keys()
    failed = next(r for r in records if r["event"] == "call-failed")
    assert failed["level"] == "warning" and failed["code"] == "call-not-found"
    summary = next(r for r in records if r["event"] == "summary")
    assert summary["ok"] == 40 and summary["failed"] == 1
    assert SIM_SECRET.encode() not in done.stderr + done.stdout


def test_without_verbose_no_per_call_lines(sim_process: dict[str, str], tmp_path: Path) -> None:
    done = run(sim_process, tmp_path, "--log-format", "json", "--no-progress")
    events = [orjson.loads(line)["event"] for line in done.stderr.splitlines()]
    assert "call-failed" not in events and "retry" not in events


def test_the_metrics_file_is_prometheus_text(sim_process: dict[str, str], tmp_path: Path) -> None:
    metrics = tmp_path / "harvester.prom"
    done = run(sim_process, tmp_path, "--no-progress", "--metrics-file", str(metrics))
    assert done.returncode == 1, done.stderr

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.read_text())
        for s in family.samples
    }
    assert samples[("harvester_calls", (("outcome", "ok"),))] == 40
    assert samples[("harvester_calls", (("outcome", "failed"),))] == 1
    assert samples[("harvester_requests", (("status", "200"),))] == 40
    assert samples[("harvester_requests", (("status", "404"),))] == 1
    assert samples[("harvester_events", ())] > 0
    assert (
        samples[("harvester_bytes_written", ())]
        == (tmp_path / "e.ndjson").stat().st_size + (tmp_path / "e.failures.ndjson").stat().st_size
    )
    assert samples[("harvester_last_exit_code", ())] == 1
    assert samples[("harvester_last_success_timestamp_seconds", ())] == 0, "exit 1 is no success"
    assert samples[("harvester_nights_behind", ())] == 0, "present for a job of no nights"
    assert samples[("harvester_build_info", (("version", __version__),))] == 1
    assert not list(tmp_path.glob(".harvester.prom.*")), "written atomically, no leftovers"


def test_the_last_success_moves_on_exit_0_only_and_survives_later_failures(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    metrics = tmp_path / "h.prom"

    def harvest(*calls: str) -> dict[str, float]:
        (tmp_path / "calls.txt").write_text("\n".join(calls))
        done = run_harvester(
            sim_process,
            *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "e.ndjson")),
            *("--metrics-file", str(metrics), "--no-progress", "--fresh"),
        )
        found = {
            s.name: s.value
            for family in text_string_to_metric_families(metrics.read_text())
            for s in family.samples
        }
        assert found["harvester_last_exit_code"] == done.returncode
        return found

    before = time.time()
    succeeded = harvest(*ids[:3])["harvester_last_success_timestamp_seconds"]
    assert before <= succeeded <= time.time()

    failed = harvest(*ids[3:5], "c-nosuchcall")
    assert failed["harvester_last_exit_code"] == 1
    assert failed["harvester_last_success_timestamp_seconds"] == succeeded

    again = harvest(*ids[5:7])
    assert again["harvester_last_exit_code"] == 0
    assert again["harvester_last_success_timestamp_seconds"] > succeeded


async def test_the_last_exit_code_is_there_from_the_first_write(tmp_path: Path) -> None:
    """No alert needs absent(): a first run still going says -1, a later run says how the run
    before it ended until it ends itself; a first run killed before its end leaves -1."""
    metrics = tmp_path / "h.prom"

    def written() -> tuple[float, float]:
        found = {
            s.name: s.value
            for family in text_string_to_metric_families(metrics.read_text())
            for s in family.samples
        }
        return (
            found["harvester_last_exit_code"],
            found["harvester_last_success_timestamp_seconds"],
        )

    def progress() -> Progress:
        return Progress(RunStats(), io.StringIO(), show=False, log_every=0, metrics_file=metrics)

    first = progress()
    await first.write_metrics()
    assert written() == (-1, 0), "a first run going on: no exit code yet, no success"
    killed = progress()  # the first run was kill -9'd: the next finds -1 and keeps it
    await killed.write_metrics()
    assert written() == (-1, 0)
    killed.finish(6)
    await killed.write_metrics()
    assert written() == (6, 0)
    later = progress()
    await later.write_metrics()
    assert written() == (6, 0), "while a run goes on, how the one before it ended"
    later.finish(0)
    await later.write_metrics()
    code, success = written()
    assert code == 0 and success > 0


def test_on_a_terminal_a_live_bar() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    stats = RunStats(calls=10, ok=6, failed=1, events=42, retries=3, rate_limited=2)
    progress = Progress(
        stats, stream, show=True, log_every=30, metrics_file=None, total=20, columns=lambda: 120
    )
    progress.draw()
    progress.finish(1)
    text = stream.getvalue()
    assert "harvester  35%|" in text and "| 7/20 " in text
    assert "events=42" in text and "retries=3" in text and "429s=2" in text and "failed=1" in text


def test_the_bar_knows_a_files_size(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("c-1\nc-2\nc-3\n")
    (tmp_path / "b.csv").write_text("callId\nc-1\nc-2\n")
    assert count_records(str(tmp_path / "a.txt")) == 3
    (tmp_path / "c.txt").write_text("c-1\nc-2")  # no newline at the end
    assert count_records(str(tmp_path / "c.txt")) == 2
    assert count_records(str(tmp_path / "b.csv")) == 2
    assert count_records("-") is None


def test_metrics_are_exact_however_large() -> None:
    from harvester.report import metrics

    stats = RunStats(calls=1_234_567, ok=1_234_566, failed=1, events=98_765_432)
    stats.job = {"calls": 1_234_567, "ok": 1_234_566, "failed": 1, "events": 98_765_432}
    now = 1_795_774_416.123
    text = metrics.render(stats, 12.5, metrics.LastRuns(0, now))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("harvester_calls", (("outcome", "ok"),))] == 1_234_566
    assert samples[("harvester_events", ())] == 98_765_432
    assert abs(samples[("harvester_last_success_timestamp_seconds", ())] - now) < 0.001
    assert "e+" not in text, "no rounded exponent forms"


def test_after_a_resume_the_bar_counts_earlier_work_in_both_numbers() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    stats = RunStats(calls=10, ok=9, failed=1, skipped=96_600, duplicates=3)
    progress = Progress(stats, stream, show=True, log_every=30, metrics_file=None, total=100_000)
    progress.draw()
    progress.finish(1)
    assert "96613/100000" in stream.getvalue()


def test_quiet_says_nothing_when_the_run_exits_0(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()
    (tmp_path / "calls.txt").write_text("\n".join(ids[:5]))
    config = tmp_path / "harvester.toml"
    config.write_text("quiet = true\nlog_every = 0.1\n")
    for quiet in (["--quiet"], ["--config", str(config)]):
        done = run_harvester(
            sim_process,
            *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "e.ndjson")),
            *("--summary", str(tmp_path / "summary.json"), *quiet),
            process=True,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"" and done.stderr == b""
    assert orjson.loads((tmp_path / "summary.json").read_bytes())["version"] == __version__


def test_quiet_says_the_warnings_errors_and_summary_of_a_run_that_fails(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    done = run(sim_process, tmp_path, "--quiet", "--log-every", "0.1", "--rate", "20")

    assert done.returncode == 1
    lines = done.stderr.decode().splitlines()
    assert re.match(STAMP + "harvester: 41 calls: 40 ok, 1 failed;", lines[-1]), lines
    assert "exit 1" in lines[-1]
    assert not [line for line in lines if "progress:" in line or " pid " in line], "info held"
    assert done.stdout == b""


def test_what_quiet_holds_is_bounded_the_first_and_the_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    from harvester import logs

    saved = logs.log.handlers[:], logs.log.level, logs.log.propagate
    try:
        logs.configure("text", quiet=True)
        for number in range(10_000):
            logs.log.warning("warning %d", number)
        logs.log.info("not held")
        logs.event(logging.INFO, "summary", "the summary")
        assert capsys.readouterr().err == ""
        held = next(h for h in logs.log.handlers if isinstance(h, logs.Held))
        assert len(held._first) + len(held._last) == logs.Held.FIRST + logs.Held.LAST

        logs.release_held()
    finally:
        logs.log.handlers[:], logs.log.level, logs.log.propagate = saved
    said = [re.sub(STAMP, "", line, count=1) for line in capsys.readouterr().err.splitlines()]
    first, last = logs.Held.FIRST, logs.Held.LAST - 1  # the summary is the last held
    assert said[:first] == [f"harvester: warning {n}" for n in range(first)]
    assert said[first] == f"harvester: ({10_000 - first - last} more warnings not shown)"
    assert said[first + 1 :] == [
        *(f"harvester: warning {n}" for n in range(10_000 - last, 10_000)),
        "harvester: the summary",
    ]


def test_the_json_log_starts_with_the_version(sim_process: dict[str, str], tmp_path: Path) -> None:
    done = run(sim_process, tmp_path, "--log-format", "json", "--no-progress")
    first = orjson.loads(done.stderr.splitlines()[0])
    assert first["event"] == "start" and first["version"] == __version__
    assert first["command"] == "run" and isinstance(first["pid"], int)
    summary = orjson.loads(done.stderr.splitlines()[-1])
    assert summary["event"] == "summary" and summary["version"] == __version__

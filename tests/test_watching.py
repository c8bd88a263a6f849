"""Watching a run: progress off and on a terminal, JSON logs, the metrics file."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harvester.progress import Progress, count_records
from harvester.sim import SIM_SECRET
from harvester.stats import RunStats

from .conftest import run_harvester


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
    assert lines[-1].startswith(b"harvester: progress: ")
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
    assert failed["level"] == "debug" and failed["code"] == "call-not-found"
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
    assert samples[("harvester_last_success_timestamp_seconds", ())] > 1.7e9
    assert not list(tmp_path.glob(".harvester.prom.*")), "written atomically, no leftovers"


def test_on_a_terminal_a_live_bar() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    stats = RunStats(calls=10, ok=6, failed=1, events=42, retries=3, rate_limited=2)
    progress = Progress(stats, stream, show=True, log_every=30, metrics_file=None, total=20)
    progress.draw()
    progress.finish(completed=False)
    text = stream.getvalue()
    assert "harvester" in text and "7/20" in text
    assert "events=42" in text and "retries=3" in text and "r429=2" in text and "failed=1" in text


def test_the_bar_knows_a_files_size(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("c-1\nc-2\nc-3\n")
    (tmp_path / "b.csv").write_text("callId\nc-1\nc-2\n")
    assert count_records(str(tmp_path / "a.txt")) == 3
    (tmp_path / "c.txt").write_text("c-1\nc-2")  # no newline at the end
    assert count_records(str(tmp_path / "c.txt")) == 2
    assert count_records(str(tmp_path / "b.csv")) == 2
    assert count_records("-") is None


def test_metrics_are_exact_however_large() -> None:
    from harvester import metrics

    stats = RunStats(calls=1_234_567, ok=1_234_566, failed=1, events=98_765_432)
    stats.job = {"calls": 1_234_567, "ok": 1_234_566, "failed": 1, "events": 98_765_432}
    now = 1_795_774_416.123
    text = metrics.render(stats, 12.5, now)
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
    progress.finish(completed=False)
    assert "96613/100000" in stream.getvalue()

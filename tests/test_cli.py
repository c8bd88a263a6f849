"""``harvester run`` as a scheduler sees it: a process, its exit code, its files, its stderr."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson
import pytest

from harvester.sim.server import SIM_SECRET

from .conftest import (
    HARVESTER,
    assert_exactly_once,
    expected_events,
    read_ndjson,
    run_harvester,
)


def registry(env: dict[str, str]) -> list[str]:
    return Path(env["IDS_FILE"]).read_text().split()


def assert_no_secret(*texts: bytes, secret: str = SIM_SECRET) -> None:
    for text in texts:
        assert secret.encode() not in text


def test_a_clean_run_exits_0_with_exact_output_and_a_summary(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = registry(sim_process)
    (tmp_path / "calls.txt").write_text("\n".join(ids))
    out, summary = tmp_path / "events.ndjson", tmp_path / "summary.json"

    done = run_harvester(
        sim_process,
        "run",
        "--input",
        str(tmp_path / "calls.txt"),
        "--output",
        str(out),
        "--summary",
        str(summary),
        "--verbose",
    )

    assert done.returncode == 0, done.stderr
    assert_exactly_once(out, ids)
    report = orjson.loads(summary.read_bytes())
    assert report["status"] == "completed" and report["exit_code"] == 0
    assert report["job_completed"] is True
    assert (report["calls"], report["ok"], report["failed"]) == (len(ids), len(ids), 0)
    assert report["this_run"]["unfinished"] == 0
    assert report["invocations"] == 1
    assert report["requests"] == len(ids) and report["events"] == len(expected_events(ids))
    assert (report["retries"], report["rate_limited"]) == (0, 0), "no faults, no limit"
    assert 0 < report["elapsed_s"] <= report["this_run"]["elapsed_s"] < 60, "one run: the job"
    assert b"40 calls: 40 ok, 0 failed" in done.stderr
    assert_no_secret(done.stdout, done.stderr, out.read_bytes(), summary.read_bytes())


def test_some_failures_exit_1_and_are_listed(sim_process: dict[str, str], tmp_path: Path) -> None:
    ids = registry(sim_process)[:5]
    calls = tmp_path / "calls.csv"
    calls.write_text(
        "callId,note\n" + "".join(f"{i},x\n" for i in ids) + "c-nosuchcall,x\nc-a/b,x\n"
    )
    summary = tmp_path / "summary.json"

    done = run_harvester(
        sim_process,
        "run",
        "-i",
        str(calls),
        "-o",
        str(tmp_path / "out.ndjson"),
        "--summary",
        str(summary),
        "--no-progress",
    )

    assert done.returncode == 1, done.stderr
    failures = read_ndjson(tmp_path / "out.failures.ndjson")
    assert {(f["callId"], f["code"]) for f in failures} == {
        ("c-nosuchcall", "call-not-found"),
        ("c-a/b", "invalid-call-id"),
    }
    report = orjson.loads(summary.read_bytes())
    assert report["ok"] + report["failed"] == report["calls"] == 7
    assert b"Failed calls are listed in" in done.stderr


def test_stdin_gzip_input(sim_process: dict[str, str], tmp_path: Path) -> None:
    ids = registry(sim_process)[:7]
    out = tmp_path / "events.ndjson"

    done = run_harvester(
        sim_process,
        "run",
        "--input",
        "-",
        "--output",
        str(out),
        "--no-progress",
        stdin=gzip.compress("".join(f'{{"id": "{i}"}}\n' for i in ids).encode()),
    )

    assert done.returncode == 0, done.stderr
    assert_exactly_once(out, ids)


def test_empty_input_exits_0(sim_process: dict[str, str], tmp_path: Path) -> None:
    done = run_harvester(
        sim_process, "run", "-i", "-", "-o", str(tmp_path / "e.ndjson"), "--no-progress", stdin=b""
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "e.ndjson").read_bytes() == b""


@pytest.mark.parametrize(
    ("args", "env_change", "message"),
    [
        (
            ["--input", "/nonexistent/calls.txt"],
            {},
            b"input file /nonexistent/calls.txt does not exist",
        ),
        (
            ["--input", "{calls}", "--user-id", "u-x/y"],
            {},
            b"--user-id: 'u-x/y' does not look like a Catapult user id",
        ),
        (["--input", "{calls}"], {"CATAPULT_API_TOKEN": ""}, b"no API credentials"),
        (["--input", "{calls}", "--base-url", "http://example.com"], {}, b"plain http"),
        (["--input", "{calls}", "--config", "/nonexistent.toml"], {}, b"does not exist"),
        (["--input", "{csv}"], {}, b"no callId or id column"),
        ([], {}, b"nothing to harvest: give a call list (--input PATH"),
        (["-i", "{calls}", "--commit-every", "0"], {}, b"--commit-every must be between 1 and"),
        (["-i", "{calls}", "--max-failures", "x"], {}, b"--max-failures: 'x' must be a count"),
        (["-i", "{calls}", "--shard", "3/3"], {}, b"--shard: '3/3' must be K/N"),
        (["-i", "{calls}"], {"CATAPULT_BASE_URL": "ftp://x"}, b"CATAPULT_BASE_URL"),
    ],
)
def test_usage_config_and_input_errors_exit_2_before_any_request(
    sim_process: dict[str, str],
    tmp_path: Path,
    args: list[str],
    env_change: dict[str, str],
    message: bytes,
) -> None:
    (tmp_path / "calls.txt").write_text("c-abc\n")
    (tmp_path / "calls.csv").write_text("call,x\nc-abc,1\n")
    args = [a.format(calls=tmp_path / "calls.txt", csv=tmp_path / "calls.csv") for a in args]

    done = run_harvester(
        {**sim_process, **env_change},
        "run",
        *args,
        "-o",
        str(tmp_path / "out.ndjson"),
        "--no-progress",
    )

    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert b"Traceback" not in done.stderr
    assert not (tmp_path / "out.ndjson").exists()


def test_refused_credentials_exit_3_fast_and_the_secret_stays_hidden(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = registry(sim_process)
    (tmp_path / "calls.txt").write_text("\n".join(ids))
    wrong = "wrong-secret-value-1234"
    summary = tmp_path / "summary.json"
    started = time.monotonic()

    done = run_harvester(
        {**sim_process, "CATAPULT_API_SECRET": wrong},
        "run",
        "-i",
        str(tmp_path / "calls.txt"),
        "-o",
        str(tmp_path / "out.ndjson"),
        "--summary",
        str(summary),
        "--concurrency",
        "4",
        "--verbose",
    )

    assert done.returncode == 3, done.stderr
    assert time.monotonic() - started < 20
    assert b"401 user-access-denied" in done.stderr
    assert b"check CATAPULT_API_TOKEN" in done.stderr
    report = orjson.loads(summary.read_bytes())
    assert report["status"] == "aborted" and report["requests"] <= 4
    run = report["this_run"]
    assert run["ok"] + run["failed"] + run["unfinished"] == run["calls"]
    for text in (
        done.stdout,
        done.stderr,
        summary.read_bytes(),
        (tmp_path / "out.ndjson").read_bytes(),
    ):
        assert_no_secret(text, secret=wrong)


def test_help_lists_exit_codes() -> None:
    done = run_harvester({}, "run", "--help")
    assert done.returncode == 0
    assert b"Exit codes" in done.stdout


@pytest.mark.parametrize("command", ["retry-failed", "check", "sim"])
def test_every_command_has_help(command: str) -> None:
    done = run_harvester({}, command, "--help")
    assert done.returncode == 0, done.stderr
    assert b"usage: harvester" in done.stdout


async def test_the_same_signal_twice_at_once_is_one_request_and_later_it_forces() -> None:
    from harvester.run.stopper import SAME_SIGNAL_SECONDS, Stopper

    exits: list[int] = []
    now = [100.0]
    stopper = Stopper(grace=10, monotonic=lambda: now[0], exit_now=exits.append)

    stopper.on_signal(signal.SIGTERM)
    now[0] += 0.001  # timeout(1) signals the process, then its group
    stopper.on_signal(signal.SIGTERM)
    assert stopper.event.is_set() and exits == []

    now[0] += SAME_SIGNAL_SECONDS  # a person who means it
    stopper.on_signal(signal.SIGTERM)
    assert exits == [143]

    other = Stopper(grace=10, monotonic=lambda: now[0], exit_now=exits.append)
    other.on_signal(signal.SIGTERM)
    other.on_signal(signal.SIGINT)  # another signal is never the same request
    assert exits == [143, 130]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "{calls}"], b"no output: give --output"),
        (["-i", "{calls}", "-o", ""], b"--output/-o: is empty"),
        (["-i", "{calls}", "-o", "{dir}", "--fresh"], b"is a folder"),
        (["-i", "{calls}", "-o", "{out}", "--base-url", "htps://tok:sec@h"], b"***@h"),
        (["-i", "{calls}", "-o", "{out}", "--base-url", "http://:@127.0.0.1:9"], b"credentials"),
        (["-i", "{calls}", "-o", "{out}", "--base-url", "http://127.0.0.1:99999"], b"parsed"),
        (["-i", "{calls}", "-o", "{out}", "--failures", "{out}"], b"name the same file"),
    ],
)
def test_bad_paths_and_urls_are_one_line_errors(
    sim_process: dict[str, str], tmp_path: Path, args: list[str], message: bytes
) -> None:
    (tmp_path / "calls.txt").write_text("c-abc\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "keep").write_text("keep")
    paths = {"calls": tmp_path / "calls.txt", "dir": tmp_path / "dir", "out": tmp_path / "o.nd"}
    done = run_harvester(sim_process, "run", *[a.format(**paths) for a in args], "--no-progress")

    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert b"Traceback" not in done.stderr and b"tok:sec" not in done.stderr
    assert (tmp_path / "dir" / "keep").read_text() == "keep"


def test_a_truncated_gzip_call_list_is_a_one_line_error_after_the_calls_before_it(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    whole = gzip.compress("".join(f"{i}\n" for i in registry(sim_process) * 50).encode())
    cut = whole[: len(whole) * 2 // 3]
    (tmp_path / "calls.txt.gz").write_bytes(cut)
    readable = zlib.decompressobj(31).decompress(cut).split(b"\n")[:-1]  # whole lines only
    ids = list(dict.fromkeys(line.decode() for line in readable))
    assert len(ids) > 10
    summary = tmp_path / "summary.json"

    done = run_harvester(
        sim_process,
        "run",
        *("-i", str(tmp_path / "calls.txt.gz"), "-o", str(tmp_path / "out.ndjson")),
        *("--summary", str(summary), "--no-progress"),
    )

    assert done.returncode == 2, done.stderr
    assert b"damaged after line" in done.stderr and b"Traceback" not in done.stderr
    assert_exactly_once(tmp_path / "out.ndjson", ids)
    assert orjson.loads(summary.read_bytes())["status"] == "usage-error"


def test_a_refused_run_leaves_the_last_summary_and_metrics_but_its_exit_code_alone(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = registry(sim_process)
    (tmp_path / "calls.txt").write_text("\n".join(ids[:5]))
    summary, metrics = tmp_path / "summary.json", tmp_path / "h.prom"
    args = [
        *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "out.ndjson")),
        *("--summary", str(summary), "--metrics-file", str(metrics), "--no-progress"),
    ]
    assert run_harvester(sim_process, *args).returncode == 0
    before = summary.read_bytes(), metrics.read_bytes()
    (tmp_path / "calls.txt").write_text("\n".join(ids[5:10]))  # another job: refused

    done = run_harvester(sim_process, *args)

    assert done.returncode == 2 and b"belongs to another run" in done.stderr
    assert summary.read_bytes() == before[0]
    # The metrics as the last run left them, but for how this one ended (for the alert).
    assert metrics.read_bytes() == before[1].replace(
        b"\nharvester_last_exit_code 0\n", b"\nharvester_last_exit_code 2\n"
    )
    assert b"harvester_last_exit_code 2" in metrics.read_bytes()


def test_an_unparsable_metrics_file_or_a_damaged_ledger_is_no_traceback(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    import sqlite3

    ids = registry(sim_process)
    (tmp_path / "calls.txt").write_text("\n".join(ids[:5]))
    metrics = tmp_path / "h.prom"
    metrics.write_text("harvester_last_success_timestamp_seconds lots\n")
    args = [
        *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "out.ndjson")),
        *("--metrics-file", str(metrics), "--no-progress"),
    ]

    done = run_harvester(sim_process, *args)

    assert done.returncode == 0, done.stderr
    assert b"harvester_last_success_timestamp_seconds 1" in metrics.read_bytes()
    with sqlite3.connect(tmp_path / "out.ndjson.state" / "ledger.sqlite") as db:
        db.execute("""UPDATE meta SET value = '{"schema": 1, "sizes": 3}'""")
    db.close()

    done = run_harvester(sim_process, *args)

    assert done.returncode == 2 and b"is damaged" in done.stderr and b"--fresh" in done.stderr
    assert b"Traceback" not in done.stderr


def test_the_simulator_refuses_a_bad_or_busy_port(tmp_path: Path) -> None:
    import socket

    done = run_harvester({}, "sim", "--port", "70000")
    assert done.returncode == 2 and b"not a port" in done.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = run_harvester({}, "sim", "--port", str(busy.getsockname()[1]))
    assert done.returncode == 2 and b"cannot serve" in done.stderr
    assert b"Traceback" not in done.stderr


def test_a_closed_stdin_or_an_odd_metrics_file_is_a_one_line_error(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out.ndjson"
    command = f"{sys.executable} -m harvester run -i - -o {out} --no-progress <&-"
    done = subprocess.run(
        ["bash", "-c", command], env=sim_process, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2 and b"stdin is closed" in done.stderr, done.stderr

    (tmp_path / "calls.txt").write_text("\n".join(registry(sim_process)[:3]))
    huge = tmp_path / "h.prom"
    huge.write_bytes(b"\xff" * 5_000_000)  # not ours, and big: read in part, then replaced
    done = run_harvester(
        sim_process,
        *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(out), "--no-progress"),
        *("--metrics-file", str(huge)),
    )
    assert done.returncode == 0, done.stderr
    assert huge.read_bytes().startswith(b"# HELP")
    done = run_harvester(
        sim_process,
        *("run", "-i", str(tmp_path / "calls.txt"), "-o", str(out), "--no-progress"),
        *("--metrics-file", "/dev/zero"),
    )
    assert done.returncode == 2 and b"not a regular file" in done.stderr


def test_a_settings_error_is_logged_as_json_when_json_was_asked_for(tmp_path: Path) -> None:
    done = run_harvester(
        {}, "run", "-i", "x.txt", "-o", str(tmp_path / "o"), "--log-format", "json"
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    record = orjson.loads(line)
    assert record["level"] == "error" and "no user id" in record["message"]


def test_what_is_wrong_in_a_config_file_is_said_as_that_file_asks(tmp_path: Path) -> None:
    config = tmp_path / "h.toml"
    config.write_text('log_format = "json"\nconcurrency = "many"\napi_secret = "s3cret"\n')
    config.chmod(0o644)  # a secret others can read: a warning, in JSON too
    args = ["run", "-i", "x.txt", "-o", str(tmp_path / "o"), "--config", str(config)]
    done = run_harvester({}, *args)
    assert done.returncode == 2
    warning, error = (orjson.loads(line) for line in done.stderr.splitlines())
    assert warning["level"] == "warning" and "chmod 600" in warning["message"]
    assert error["level"] == "error" and "concurrency (in " in error["message"]
    assert b"s3cret" not in done.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"# caf\xe9\nconcurrency = 2\n", b"is not UTF-8 text"),
        (b"concurrency = " + b"9" * 5000 + b"\n", b"is not valid TOML"),
        (b"a = " + b"[" * 5000 + b"\n", b"is not valid TOML"),
        (b"# " + b"x" * (1 << 21) + b"\n", b"longer than 1024 KiB"),
        (None, b"not a file"),  # /dev/zero: endless
        (b"", b"File name too long"),  # a name the system refuses
    ],
    ids=["latin-1", "huge-int", "deep", "huge", "device", "long-name"],
)
def test_a_config_file_that_is_no_config_is_a_one_line_error(
    tmp_path: Path, content: bytes | None, message: bytes
) -> None:
    config = Path("/dev/zero") if content is None else tmp_path / "c.toml"
    if message == b"File name too long":
        config = tmp_path / ("c" * 300 + ".toml")
    elif content is not None:
        config.write_bytes(content)
    args = ["run", "-i", "x.txt", "-o", str(tmp_path / "o"), "--config", str(config)]
    done = run_harvester({}, *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and b"Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_config_file_from_a_pipe_is_read_once(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "calls.txt").write_text("\n".join(registry(sim_process)[:3]))
    script = (
        f"{' '.join(HARVESTER)} run -i {tmp_path / 'calls.txt'} -o {tmp_path / 'o.ndjson'} "
        "--config <(printf 'log_format = \"json\"\\nconcurrency = 2\\n')"
    )
    done = subprocess.run(["bash", "-c", script], env=sim_process, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert all(orjson.loads(line)["level"] for line in done.stderr.splitlines()), "JSON lines"


def test_refused_credentials_from_a_config_file_point_at_the_file(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "h.toml"
    config.write_text('api_token = "wrong"\napi_secret = "wrong-too"\n')
    config.chmod(0o600)
    env = {
        k: v
        for k, v in sim_process.items()
        if k not in ("CATAPULT_API_TOKEN", "CATAPULT_API_SECRET")
    }
    (tmp_path / "calls.txt").write_text("\n".join(registry(sim_process)[:3]))
    for args in (["check"], ["run", "-i", str(tmp_path / "calls.txt"), "-o", str(tmp_path / "o")]):
        done = run_harvester(env, *args, "--config", str(config))
        assert done.returncode == 3, done.stderr
        assert f"api_secret (in {config})".encode() in done.stderr
        assert b"CATAPULT_API_SECRET" not in done.stderr


def test_retry_failed_takes_a_templated_output_as_run_did(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    out = str(tmp_path / "e-{date}-{shard}.ndjson")
    window = ["--yesterday", "--shard", "0/2"]
    assert run_harvester(sim_process, "run", *window, "-o", out, "--no-progress").returncode == 0
    done = run_harvester(sim_process, "retry-failed", *window, "-o", out, "--no-progress")
    assert done.returncode == 0, done.stderr


def test_a_list_read_in_the_wrong_format_stops_before_anything_is_committed(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = registry(sim_process)[:20]
    (tmp_path / "calls.txt").write_text("callId,note\n" + "".join(f"{i},x\n" for i in ids))
    out = tmp_path / "e.ndjson"
    wrong = ["run", "-i", str(tmp_path / "calls.txt"), "-o", str(out), "--no-progress"]

    done = run_harvester(sim_process, *wrong, "--input-format", "text")

    assert done.returncode == 2, done.stderr
    assert b"are not call ids" in done.stderr and b"--input-format" in done.stderr
    assert not out.exists() and not (tmp_path / "e.failures.ndjson").exists()
    right = run_harvester(sim_process, *wrong)  # as the content says: a CSV
    assert right.returncode == 0, right.stderr
    assert_exactly_once(out, ids)


def test_a_refused_call_list_writes_nothing_and_the_fixed_one_runs(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    ids = registry(sim_process)[:12]
    calls = tmp_path / "semi.csv"
    calls.write_text("".join(f"{i};x\n" for i in ids))  # no header: which column is the id?
    (tmp_path / "keep.json").write_text("earlier\n")
    out = tmp_path / "m.ndjson"
    args = ["run", "-i", str(calls), "-o", str(out), "--summary", str(tmp_path / "keep.json")]

    refused = run_harvester(sim_process, *args, "--no-progress")

    assert refused.returncode == 2, refused.stderr
    assert b"no callId or id column (found, separated by semicolons" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json", "semi.csv"]
    assert (tmp_path / "keep.json").read_text() == "earlier\n"
    calls.write_text("callId;note\n" + calls.read_text())  # a header names the id column
    assert run_harvester(sim_process, *args, "--no-progress").returncode == 0

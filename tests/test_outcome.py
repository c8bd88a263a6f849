"""How a run ended, by one rule for the command and the library (``harvester.run.outcome``)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from harvester import exits
from harvester.errors import ApiUnavailable, FatalApiError
from harvester.run.outcome import of_error, of_run, stopped
from harvester.settings.load import load_settings
from harvester.stats import RunStats

ENV = {"CATAPULT_API_TOKEN": "t", "CATAPULT_API_SECRET": "s", "CATAPULT_USER_ID": "u-abc"}


def settings(**flags: Any) -> Any:
    return load_settings({"input": "calls.txt", "output": Path("e.ndjson"), **flags}, ENV)


def job(calls: int, failed: int, completed: bool = True) -> RunStats:
    return RunStats(completed=completed, job={"calls": calls, "failed": failed})


def test_a_finished_run_exits_by_its_failures_and_emptiness() -> None:
    assert of_run(settings(), job(10, 0), None).code == exits.OK
    assert of_run(settings(), job(10, 1), None).code == exits.FAILURES
    assert of_run(settings(max_failures="10%"), job(10, 1), None).code == exits.OK
    assert of_run(settings(), job(0, 0), None).code == exits.OK
    empty = of_run(settings(fail_on_empty=True), job(0, 0), None)
    assert (empty.code, empty.status) == (exits.EMPTY, "empty")


def test_a_stop_asked_for_is_its_own_end() -> None:
    by_signal = of_run(settings(), job(3, 0, completed=False), stopped(signal.SIGTERM))
    assert (by_signal.code, by_signal.status) == (exits.SIGTERM, "stopped")
    # A library caller's stop (no signal, no deadline reached): as at the deadline.
    caller = of_run(settings(), job(3, 0, completed=False), None)
    assert (caller.code, caller.status) == (exits.DEADLINE, "deadline")


def test_a_run_of_nights_ends_as_its_worst_night() -> None:
    stats = RunStats(
        nights=[
            {"date": "2026-12-01", "status": "completed", "calls": 5, "failed": 0},
            {"date": "2026-12-02", "status": "api-unavailable", "calls": 1, "error": "down"},
            {"date": "2026-12-03", "status": "stopped", "calls": 2},
        ]
    )
    ended = of_run(settings(input=None, nights=3, output=Path("e-{date}.ndjson")), stats, None)
    assert (ended.code, ended.status, ended.error) == (exits.UNAVAILABLE, "api-unavailable", "down")
    assert [n["exit_code"] for n in stats.nights] == [exits.OK, exits.UNAVAILABLE, exits.DEADLINE]


def test_an_error_says_its_status_in_our_words() -> None:
    refused = of_error(FatalApiError(401, "aborted", "credentials refused"), "CATAPULT_API_TOKEN")
    assert refused.code == exits.FATAL_API and "check CATAPULT_API_TOKEN" in (refused.error or "")
    down = of_error(ApiUnavailable(None, "api-unavailable", "the API is down"), "x")
    assert (down.code, down.status) == (exits.UNAVAILABLE, "api-unavailable")
    bug = of_error(KeyError("secret text of a library"), "x")
    assert bug.code == exits.INTERNAL and "secret text" not in (bug.error or "")

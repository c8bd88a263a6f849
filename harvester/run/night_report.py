"""What the nights of a run add up to: each night's entry in the summary (its date, how it
stands, its job's counters), and their counters together, as the job's."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from harvester.exits import NightState, Status
from harvester.run.night_plan import Night, night_state
from harvester.settings.config import Settings


def entry_of(each: Night, settings: Settings) -> dict[str, Any]:
    """A night's entry in the summary: its date, how it stands, and its job's counters."""
    job = each.sink.snapshot() if each.sink is not None else _ledger_totals(each)
    status = each.status or (
        Status.COMPLETED if each.state == NightState.COMPLETED else NightState.NOT_STARTED
    )
    entry: dict[str, Any] = {
        "date": str(each.day),
        "status": status,
        "earlier": each.sink is None and each.state == NightState.COMPLETED and not each.status,
        "job_completed": bool(job.get("completed")),
        **{key: job.get(key, 0) for key in ("calls", "ok", "failed", "events", "invocations")},
        "failures_by_code": job.get("failures_by_code", {}),
        "output": str(each.paths["events"]),
        "failures_file": str(each.paths["failures"]),
    }
    if status == Status.COMPLETED:
        allowed = settings.max_failures.allowed(entry["calls"])
        entry["failed_over_limit"] = entry["failed"] > allowed
    if each.error is not None:
        entry["error"] = each.error
    return entry


def _committed_bytes(entry: dict[str, Any]) -> int:
    """The bytes a night's files hold (what the metrics count as written)."""
    total = 0
    for key in ("output", "failures_file"):
        with contextlib.suppress(OSError):
            total += Path(entry[key]).stat().st_size
    return total


def _ledger_totals(each: Night) -> dict[str, Any]:
    return night_state(each.paths["events"])


def together(nights: list[dict[str, Any]]) -> dict[str, Any]:
    """The nights' counters added up: the job's, as a summary's top level counts it."""
    together: dict[str, Any] = {
        key: sum(entry[key] for entry in nights) for key in ("calls", "ok", "failed", "events")
    }
    together["invocations"] = max((entry["invocations"] for entry in nights), default=0)
    together["bytes"] = sum(_committed_bytes(entry) for entry in nights)
    codes: dict[str, int] = {}
    for entry in nights:
        for code, count in entry["failures_by_code"].items():
            codes[code] = codes.get(code, 0) + count
    together["failures_by_code"] = codes
    together["completed"] = all(entry["status"] == Status.COMPLETED for entry in nights)
    return together

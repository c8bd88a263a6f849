"""The counters of one run, shared by the pool and the client, and the summary built from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

_NOT_COUNTERS = (
    "records",
    "events_before",
    "job",
    "completed",
    "files",
    "status",
    "exit_code",
    "paused_until",
    "night",
    "nights_behind",
    "nights",
)


@dataclass(slots=True)
class RunStats:
    """Live counters; ``ok + failed == calls`` once a run has finished (not when it was stopped)."""

    calls: int = 0  # records taken on by this run (not done earlier, not duplicates)
    ok: int = 0
    failed: int = 0
    events: int = 0
    events_before: int = 0  # the job's events written by earlier runs (of the nights taken on)
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    duplicates: int = 0
    invalid: int = 0
    skipped: int = 0  # done in an earlier run of the same job
    listed: int = 0  # calls seen on the call list's pages (a window run)
    undated: int = 0  # listed calls without a usable startTime, so in no window
    other_shard: int = 0  # records left to the other shards
    records: int | None = None  # the call list's records (its lines), once counted; else None
    failures_by_code: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)  # answers by HTTP status
    paused_until: float = 0.0  # the wall time until which the API asked every request to wait
    night: str = ""  # with nights: the one whose calls were handed out last
    nights_behind: int = 0  # with nights: those not completed yet
    nights: list[dict[str, Any]] = field(default_factory=list)  # with nights: one entry each
    completed: bool = False  # every input record has an outcome
    job: dict[str, Any] = field(default_factory=dict)  # the whole job's committed counters
    files: dict[str, str] = field(default_factory=dict)  # the job's files: events, failures, ...
    status: str = ""  # how the run ended, for library callers: completed or stopped
    exit_code: int | None = None  # what `harvester run` would have exited with, once completed

    def count_failure(self, code: str) -> None:
        self.failed += 1
        self.failures_by_code[code] = self.failures_by_code.get(code, 0) + 1

    def handled(self) -> int:
        """Records of the call list dealt with so far, as ``records`` counts them (its lines):
        the calls this run finished, and those done by earlier runs, doubled, or another
        shard's. Every run reads its list from the start, so this is where the job stands."""
        return self.ok + self.failed + self.skipped + self.duplicates + self.other_shard

    def as_dict(self) -> dict[str, Any]:
        """The counters, plus ``unfinished``: calls read but not done when a run was stopped."""
        counters = {k: v for k, v in asdict(self).items() if k not in _NOT_COUNTERS}
        counters["statuses"] = {str(status): n for status, n in sorted(self.statuses.items())}
        return {**counters, "unfinished": self.calls - self.ok - self.failed}

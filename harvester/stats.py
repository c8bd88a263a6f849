"""The counters of one run, shared by the pool and the client, and the summary built from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class RunStats:
    """Live counters; ``ok + failed == calls`` once a run has finished (not when it was stopped)."""

    calls: int = 0  # records taken on by this run (not done earlier, not duplicates)
    ok: int = 0
    failed: int = 0
    events: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    duplicates: int = 0
    invalid: int = 0
    skipped: int = 0  # done in an earlier run of the same job
    listed: int = 0  # calls seen on the call list's pages (a window run)
    undated: int = 0  # listed calls without a usable startTime, so in no window
    other_shard: int = 0  # records left to the other shards
    failures_by_code: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)  # answers by HTTP status
    completed: bool = False  # every input record has an outcome
    job: dict[str, Any] = field(default_factory=dict)  # the whole job's committed counters

    def count_failure(self, code: str) -> None:
        self.failed += 1
        self.failures_by_code[code] = self.failures_by_code.get(code, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """The counters, plus ``unfinished``: calls read but not done when a run was stopped."""
        counters = {k: v for k, v in asdict(self).items() if k not in ("job", "completed")}
        counters["statuses"] = {str(status): n for status, n in sorted(self.statuses.items())}
        return {**counters, "unfinished": self.calls - self.ok - self.failed}

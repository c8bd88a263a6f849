"""A batch (``Batch``): what one commit writes, the output bytes and the ledger rows that vouch
for them, collected by the sink and made durable by the journal."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Batch:
    """What one commit writes: output bytes and the ledger rows that vouch for them."""

    events: bytearray = field(default_factory=bytearray)
    failures: bytearray = field(default_factory=bytearray)
    calls: bytearray = field(default_factory=bytearray)  # listed call records, if kept
    rows: list[tuple[str, int, int]] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    event_count: int = 0
    failure_codes: Counter[str] = field(default_factory=Counter)
    list_cursor: str | None = None  # a listing run's place, up to which all is committed
    list_cursor_time: datetime | None = None  # the oldest start of the page before it

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def size(self) -> int:
        """Bytes of output the batch holds."""
        return len(self.events) + len(self.failures) + len(self.calls)

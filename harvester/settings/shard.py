"""``--shard K/N``: a deterministic partition of call ids, so N machines split one job with no
overlap and no gap (a Kubernetes Indexed Job, Airflow mapped tasks)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from harvester.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``, 0 <= index < count."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, slash, count = text.partition("/")
        try:
            shard = cls(int(index), int(count)) if slash else None
        except ValueError:
            shard = None
        if shard is None or not 0 <= shard.index < shard.count:
            raise ConfigError(
                f"{text!r} must be K/N with 0 <= K < N, e.g. 0/4 ... 3/4 "
                "(a Kubernetes Indexed Job's JOB_COMPLETION_INDEX is K)"
            )
        return shard

    def owns(self, key: str) -> bool:
        """True when ``key`` (a call id) belongs to this shard; the same answer everywhere."""
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

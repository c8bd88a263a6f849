"""``--shard K/N``: N machines split one job with no overlap and no gap, the same everywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harvester.errors import ConfigError
from harvester.settings.shard import Shard

IDS = [f"c-{n:08x}call" for n in range(3000)]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_the_shards_of_a_job_split_every_call_once(count: int) -> None:
    shards = [Shard(index, count) for index in range(count)]
    owners = [[shard for shard in shards if shard.owns(call)] for call in IDS]
    assert all(len(owner) == 1 for owner in owners), "each call in exactly one shard"
    sizes = [sum(owner == [shard] for owner in owners) for shard in shards]
    assert min(sizes) > 0.8 * len(IDS) / count, f"shards are about even: {sizes}"


def test_a_call_belongs_to_the_same_shard_in_every_process() -> None:
    # Python's own hash() changes from process to process (PYTHONHASHSEED): a shard must not.
    code = (
        "import sys; from harvester.settings.shard import Shard; "
        "print(''.join('1' if Shard(2, 5).owns(call) else '0' for call in sys.argv[1:]))"
    )
    calls = IDS[:300]
    elsewhere = subprocess.run(
        [sys.executable, "-c", code, *calls], capture_output=True, check=True, text=True
    )
    assert elsewhere.stdout.strip() == "".join("1" if Shard(2, 5).owns(c) else "0" for c in calls)


@pytest.mark.parametrize(
    ("text", "index", "count"), [("0/1", 0, 1), ("3/4", 3, 4), ("9/10", 9, 10)]
)
def test_k_of_n_reads_as_written(text: str, index: int, count: int) -> None:
    shard = Shard.parse(text)
    assert (shard.index, shard.count) == (index, count)
    assert str(shard) == text


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "1", "a/b", "1/2/3", "", "1 / 2x"])
def test_a_shard_that_is_not_k_of_n_is_explained(text: str) -> None:
    with pytest.raises(ConfigError, match="must be K/N with 0 <= K < N"):
        Shard.parse(text)

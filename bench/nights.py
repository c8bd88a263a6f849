"""List requests per catch-up of nights: one pass over the API's call list, against the pages
the nights span, and against a pass per night.

    python bench/nights.py [CALLS_A_NIGHT] [PAGE_SIZE]

The API lists calls newest first and has no date filter, so reaching a night k days back means
paging through the k - 1 days after it. A catch-up of k nights (``harvester run --nights k``
on a job with none done) should read the list once, back to the oldest night's start: the
pages that span the k nights, no more; k runs of one night each would page through the newer
days again for every older night. The simulator holds CALLS_A_NIGHT calls a night for the
eight days before today; every run takes shard 0 of 100 only, so that events are few and the
list is all that is measured. At the documented 1 request a second, a page is a second.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from simproc import running_simulator

from harvester.sim.server import SimConfig, Simulator

DAYS = 8


def list_requests(env: dict[str, str]) -> int:
    with urllib.request.urlopen(f"{env['CATAPULT_BASE_URL']}/_sim/log") as answer:
        log = orjson.loads(answer.read())
    return sum(1 for _, _, path in log if path.split("?")[0].endswith("/calls"))


def main() -> None:
    per_night = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    page = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    calls = per_night * DAYS
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    registry = Simulator(SimConfig(calls=calls, days=DAYS, anchor=today))
    starts = sorted((r["startTime"] for r in registry.call_records()), reverse=True)

    def spanned(back: int) -> int:
        """Pages from the newest call to the start of the night ``back`` days ago: those
        holding a call of it or of a newer night, and the one that reaches past it."""
        since = (today - timedelta(days=back)).strftime("%Y-%m-%dT%H:%M:%S")
        newer = sum(1 for start in starts if start >= since)
        return newer // page + 1

    print(f"{per_night} calls a night, {page} a page, {DAYS} days listed; shard 0/100 of events")
    print(f"{'nights':>6} {'list requests':>14} {'pages spanned':>14} {'a pass a night':>15}")
    for nights in (1, 4, 7):
        options = ("--calls", str(calls), "--days", str(DAYS))
        with tempfile.TemporaryDirectory() as folder, running_simulator(*options) as env:
            subprocess.run(
                [
                    *(sys.executable, "-m", "harvester", "run", "--nights", str(nights)),
                    *("-o", str(Path(folder) / "e-{date}-{shard}.ndjson")),
                    *("--shard", "0/100", "--list-page-size", str(page), "--no-progress"),
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            used = list_requests(env)
        each = sum(spanned(back) for back in range(1, nights + 1))
        print(f"{nights:>6} {used:>14} {spanned(nights):>14} {each:>15}")


if __name__ == "__main__":
    main()

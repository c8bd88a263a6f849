"""What the crash-safe journal costs per call, without any network: claim (lookup) and commit.

    python bench/ledger.py [CALLS] [COMMIT_CALLS]
Prints microseconds per call for a fresh run (every id new) and for a resume over a finished
one (every id already done), and the cost of one commit.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from harvester.ids import CallRef
from harvester.sim.server import call_id_for, events_for
from harvester.store.batch import Batch
from harvester.store.journal import Journal
from harvester.store.ledger import OK
from harvester.store.ndjson import event_lines

READ_BATCH = 1024


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    per_commit = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    ids = [call_id_for(5, i) for i in range(calls)]
    lines = event_lines(ids[0], events_for(ids[0]))
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "events.ndjson"
        failures = Path(folder) / "events.failures.ndjson"
        identity = {"input": "bench"}

        journal = Journal.open({"events": output, "failures": failures}, identity)
        started = time.perf_counter()
        commits = 0
        commit_time = 0.0
        batch = Batch()
        for start in range(0, calls, READ_BATCH):
            chunk = [
                CallRef(call_id, start + n + 1)
                for n, call_id in enumerate(ids[start : start + READ_BATCH])
            ]
            journal.claim(chunk)
            for call_id, line in chunk:
                batch.events += lines
                batch.rows.append((call_id, line, OK))
                batch.ok += 1
                if len(batch) >= per_commit:
                    begun = time.perf_counter()
                    journal.commit(batch, {"requests": 0, "retries": 0, "rate_limited": 0}, 0.0)
                    commit_time += time.perf_counter() - begun
                    commits += 1
                    batch = Batch()
        journal.commit(batch, {"requests": 0, "retries": 0, "rate_limited": 0}, 0.0)
        fresh = time.perf_counter() - started
        journal.close()

        journal = Journal.open({"events": output, "failures": failures}, identity)
        started = time.perf_counter()
        for start in range(0, calls, READ_BATCH):
            chunk = [
                CallRef(call_id, start + n + 1)
                for n, call_id in enumerate(ids[start : start + READ_BATCH])
            ]
            journal.claim(chunk)
        resumed = time.perf_counter() - started
        journal.close()
        ledger_size = (output.with_name(output.name + ".state") / "ledger.sqlite").stat().st_size

    print(f"{calls} calls, a commit every {per_commit} calls ({len(lines)} bytes of events each)")
    print(f"fresh run: {fresh / calls * 1e6:.1f} us per call (claim + commit, fsyncs included)")
    print(f"one commit: {commit_time / max(commits, 1) * 1e3:.1f} ms ({commits} commits)")
    print(f"resume over a finished run: {resumed / calls * 1e6:.1f} us per call (lookup only)")
    print(f"ledger: {ledger_size / calls:.0f} bytes per call on disk")


if __name__ == "__main__":
    main()

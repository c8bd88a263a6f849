"""The simulator in a process of its own, on the benchmarks' event loop (``eventloop``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from eventloop import HARVESTER_ON_LOOP

from harvester.sim.server import SIM_SECRET, SIM_TOKEN, SIM_USER_ID, call_id_for

# A run counted under a tracer or callgrind goes ten to fifty times slower: its commits would
# come by the clock (commit_seconds) rather than every commit_calls calls as at full speed, as
# many as the machine's load makes them. This makes them come by count only, as in a real run.
COMMITS_BY_COUNT = {"HARVESTER_COMMIT_SECONDS": "3600"}


def write_ids(path: Path, calls: int) -> Path:
    """A call list of ``calls`` ids the open-world simulator answers, at ``path``."""
    path.write_text("".join(f"{call_id_for(99, i)}\n" for i in range(calls)))
    return path


@contextlib.contextmanager
def running_simulator(*options: str) -> Iterator[dict[str, str]]:
    """Start `harvester sim` with ``options``; yield the environment that points harvester at
    it (CATAPULT_BASE_URL and the credentials)."""
    with tempfile.TemporaryDirectory() as folder:
        ready = Path(folder) / "url"
        server = subprocess.Popen(
            [sys.executable, "-c", HARVESTER_ON_LOOP, "sim", *options, "--ready-file", str(ready)],
            stderr=subprocess.DEVNULL,
        )
        try:
            while not ready.exists():
                if server.poll() is not None:
                    raise RuntimeError("the simulator did not start")
                time.sleep(0.05)
            yield {
                **os.environ,
                "CATAPULT_BASE_URL": ready.read_text().strip(),
                "CATAPULT_USER_ID": SIM_USER_ID,
                "CATAPULT_API_TOKEN": SIM_TOKEN,
                "CATAPULT_API_SECRET": SIM_SECRET,
            }
        finally:
            server.terminate()
            server.wait()

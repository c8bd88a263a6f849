"""Instructions per call at several concurrencies, harvester against the minimal loop: a figure
that does not drift with the machine's load, to find what of ours grows with the calls in flight.

    python bench/concurrency.py [CONCURRENCY ...] [--calls SMALL LARGE]   (default 16 256; 300 1300)

Runs ``bench/baseline.py`` and ``bench/harvester_run.py`` under ``valgrind --tool=callgrind``
(the client only; the simulator runs on its own, open world) on SMALL and LARGE calls at each
concurrency, and prints the difference per call: start-up, imports and opening the connections
cancel out. Under callgrind the client is some 50 times slower than the simulator, so every
worker has a request in flight: the worst case for what grows with concurrency. Takes about a
minute a line.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from instructions import callgrind_total
from simproc import running_simulator, write_ids

from harvester.sim.server import SIM_USER_ID

HERE = Path(__file__).parent
SMALL, LARGE = 300, 1300


def instructions(script: str, calls: int, concurrency: int, env: dict[str, str], work: Path) -> int:
    """Instructions the client of ``script`` executed for ``calls`` calls."""
    ids = write_ids(work / f"ids-{calls}.txt", calls)
    command = [sys.executable, str(HERE / script), env["CATAPULT_BASE_URL"], SIM_USER_ID]
    command += [str(ids), str(work / "out.ndjson"), str(concurrency)]
    return callgrind_total(command, {**env, "PYTHONPATH": f"{HERE.parent}:{HERE}"}, work)


def main() -> None:
    arguments = sys.argv[1:]
    small, large = SMALL, LARGE
    if "--calls" in arguments:
        at = arguments.index("--calls")
        small, large = int(arguments[at + 1]), int(arguments[at + 2])
        del arguments[at : at + 3]
    levels = [int(arg) for arg in arguments] or [16, 256]
    print(f"instructions per call ({large} calls less {small}), client only, under callgrind")
    print(f"{'concurrency':>11} {'baseline':>10} {'harvester':>10} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as folder, running_simulator("--open-world") as env:
        work = Path(folder)
        for level in levels:
            per_call = []
            for script in ("baseline.py", "harvester_run.py"):
                few, many = (instructions(script, n, level, env, work) for n in (small, large))
                per_call.append((many - few) / (large - small))
            base, ours = per_call
            print(f"{level:>11} {base:>10.0f} {ours:>10.0f} {ours / base:>6.2f}", flush=True)


if __name__ == "__main__":
    main()

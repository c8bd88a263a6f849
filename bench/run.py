"""`make bench`: harvester's own overhead against a minimal aiohttp loop, measured in one run.

Starts the simulator (open world, no latency, no limit) in its own process, then runs the
baseline loop and harvester on the same call list, alternately, ROUNDS times each, each in its
own process so CPU time is its own; all three on uvloop where it installs (``eventloop``).
Prints calls/s, client CPU microseconds per call, and the ratios harvester / baseline (best
round of each).

    python bench/run.py [CALLS] [CONCURRENCY]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from simproc import running_simulator

from harvester.sim.server import SIM_USER_ID, call_id_for

ROUNDS = 3
HERE = Path(__file__).parent


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    scripts = {"baseline": HERE / "baseline.py", "harvester": HERE / "harvester_run.py"}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in scripts}
    with tempfile.TemporaryDirectory() as folder, running_simulator("--open-world") as env:
        work = Path(folder)
        ids = work / "ids.txt"
        ids.write_text("".join(f"{call_id_for(99, i)}\n" for i in range(calls)))
        for _ in range(ROUNDS):
            for name, script in scripts.items():
                arguments = [env["CATAPULT_BASE_URL"], SIM_USER_ID, str(ids)]
                arguments += [str(work / f"{name}.ndjson"), str(concurrency)]
                done = subprocess.run(
                    [sys.executable, str(script), *arguments],
                    env=env,
                    capture_output=True,
                    check=True,
                )
                results[name].append(orjson.loads(done.stdout))
    report(results, calls, concurrency)


def report(results: dict[str, list[dict[str, Any]]], calls: int, concurrency: int) -> None:
    best = {
        name: max(runs, key=lambda r: r["calls"] / r["seconds"]) for name, runs in results.items()
    }
    leanest = {name: min(r["cpu_s"] for r in runs) for name, runs in results.items()}
    loops = "/".join(sorted({run["loop"] for runs in results.values() for run in runs}))
    print(
        f"{calls} calls, concurrency {concurrency}, simulator on loopback, {loops}, "
        f"best of {ROUNDS}"
    )
    print(f"{'client':<10} {'calls/s':>9} {'CPU us/call':>12}")
    for name in results:
        rate = best[name]["calls"] / best[name]["seconds"]
        print(f"{name:<10} {rate:>9.0f} {leanest[name] / calls * 1e6:>12.0f}")
    throughput = (best["harvester"]["calls"] / best["harvester"]["seconds"]) / (
        best["baseline"]["calls"] / best["baseline"]["seconds"]
    )
    print(f"throughput ratio harvester/baseline: {throughput:.2f}")
    print(
        f"CPU per call ratio harvester/baseline: {leanest['harvester'] / leanest['baseline']:.2f}"
    )


if __name__ == "__main__":
    main()

"""`make bench`: harvester's own overhead against a minimal aiohttp loop, measured in one run.

Starts the simulator (open world, no latency, no limit) in its own process, then runs the
baseline loop and harvester on the same call list, alternately, ROUNDS times each, each in its
own process so CPU time is its own. Prints calls/s, client CPU microseconds per call, and the
ratios harvester / baseline (best round of each).

    python bench/run.py [CALLS] [CONCURRENCY]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from harvester.sim import SIM_SECRET, SIM_TOKEN, SIM_USER_ID, call_id_for

ROUNDS = 3
HERE = Path(__file__).parent


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        ids = work / "ids.txt"
        ids.write_text("".join(f"{call_id_for(99, i)}\n" for i in range(calls)))
        ready = work / "url"
        server = subprocess.Popen(
            [sys.executable, "-m", "harvester", "sim", "--open-world", "--ready-file", str(ready)],
            stderr=subprocess.DEVNULL,
        )
        try:
            while not ready.exists():
                time.sleep(0.05)
            base = ready.read_text().strip()
            env = {**os.environ, "CATAPULT_API_TOKEN": SIM_TOKEN, "CATAPULT_API_SECRET": SIM_SECRET}
            results: dict[str, list[dict[str, Any]]] = {"baseline": [], "harvester": []}
            for _ in range(ROUNDS):
                for name in results:
                    out = work / f"{name}.ndjson"
                    done = subprocess.run(
                        [
                            sys.executable,
                            str(
                                HERE / f"{name}.py"
                                if name == "baseline"
                                else HERE / "harvester_run.py"
                            ),
                            base,
                            SIM_USER_ID,
                            str(ids),
                            str(out),
                            str(concurrency),
                        ],
                        env=env,
                        capture_output=True,
                        check=True,
                    )
                    results[name].append(orjson.loads(done.stdout))
        finally:
            server.terminate()
            server.wait()
    report(results, calls, concurrency)


def report(results: dict[str, list[dict[str, Any]]], calls: int, concurrency: int) -> None:
    best = {
        name: max(runs, key=lambda r: r["calls"] / r["seconds"]) for name, runs in results.items()
    }
    leanest = {name: min(r["cpu_s"] for r in runs) for name, runs in results.items()}
    print(f"{calls} calls, concurrency {concurrency}, simulator on loopback, best of {ROUNDS}")
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

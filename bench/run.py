"""`make bench`: harvester's own overhead against a minimal aiohttp loop, measured in one run.

Starts the simulator (open world, no latency, no limit) in its own process, then runs the
baseline loop and harvester on the same call list, alternately, ROUNDS times each, each in its
own process so CPU time is its own; all three on uvloop where it installs (``eventloop``).
Prints calls/s, client CPU microseconds per call, and the ratios harvester / baseline (best
round of each).

    python bench/run.py [CALLS] [CONCURRENCY ...] [--rounds N]

Several concurrencies are measured one after the other on the same simulator. Besides the best
round of each client, the ratios of each round's pair (harvester's round against the baseline's
round just before it) are printed, median and range: on a machine whose speed drifts with
other work, a pair a few seconds apart is the fairer comparison.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from simproc import running_simulator, write_ids

from harvester.sim.server import SIM_USER_ID

ROUNDS = 3
HERE = Path(__file__).parent


def main() -> None:
    arguments = sys.argv[1:]
    rounds = ROUNDS
    if "--rounds" in arguments:
        at = arguments.index("--rounds")
        rounds = int(arguments[at + 1])
        del arguments[at : at + 2]
    calls = int(arguments[0]) if arguments else 20_000
    levels = [int(level) for level in arguments[1:]] or [16]
    with tempfile.TemporaryDirectory() as folder, running_simulator("--open-world") as env:
        work = Path(folder)
        ids = write_ids(work / "ids.txt", calls)
        for concurrency in levels:
            results = measure(env, work, ids, concurrency, rounds)
            report(results, calls, concurrency, rounds)


def measure(
    env: dict[str, str], work: Path, ids: Path, concurrency: int, rounds: int
) -> dict[str, list[dict[str, Any]]]:
    scripts = {"baseline": HERE / "baseline.py", "harvester": HERE / "harvester_run.py"}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in scripts}
    for _ in range(rounds):
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
    return results


def report(
    results: dict[str, list[dict[str, Any]]], calls: int, concurrency: int, rounds: int
) -> None:
    best = {
        name: max(runs, key=lambda r: r["calls"] / r["seconds"]) for name, runs in results.items()
    }
    leanest = {name: min(r["cpu_s"] for r in runs) for name, runs in results.items()}
    loops = "/".join(sorted({run["loop"] for runs in results.values() for run in runs}))
    print(
        f"{calls} calls, concurrency {concurrency}, simulator on loopback, {loops}, "
        f"best of {rounds}"
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
    pairs = list(zip(results["baseline"], results["harvester"], strict=True))
    speed = [
        (ours["calls"] / ours["seconds"]) / (base["calls"] / base["seconds"])
        for base, ours in pairs
    ]
    cpu = [ours["cpu_s"] / base["cpu_s"] for base, ours in pairs]
    for name, ratios in (("throughput", speed), ("CPU per call", cpu)):
        print(
            f"{name} ratio, round by round: median {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f} to {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()

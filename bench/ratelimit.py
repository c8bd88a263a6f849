"""How close harvester gets to the API's rate limit, and how many 429s it provokes on the way.

    python bench/ratelimit.py [SECONDS]

Against the simulator (its own process; a fixed 1-second window as Catapult documents, 30 ms
latency), for limits of 20, 100 and 500 requests/s, runs `harvester run --concurrency 64` on
about SECONDS worth of calls, once with `--rate LIMIT` (configured) and once without (adaptive),
then reads the simulator's log. Then, at 100/s, the adaptive run with --concurrency 8 and 64.

Reported per run: settling time (from the first request to the first second from which every
full second is served at 90% of the limit or more), achieved rate / limit and 429 share after
settling, and 429s over the whole run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from simproc import running_simulator

from harvester.sim import call_id_for

LATENCY = 0.03


def measure(limit: int, rate: float | None, concurrency: int, seconds: float) -> dict[str, Any]:
    options = ["--open-world", "--rate-limit", str(limit), "--latency", str(LATENCY)]
    with tempfile.TemporaryDirectory() as folder, running_simulator(*options) as env:
        work = Path(folder)
        calls = work / "calls.txt"
        count = int(limit * seconds)
        calls.write_text("".join(f"{call_id_for(limit, i)}\n" for i in range(count)))
        args = [sys.executable, "-m", "harvester", "run", "-i", str(calls), "-o"]
        args += [str(work / "out.ndjson"), "--no-progress", "--concurrency", str(concurrency)]
        if rate is not None:
            args += ["--rate", str(rate)]
        subprocess.run(args, env=env, check=True, capture_output=True)
        base = env["CATAPULT_BASE_URL"]
        with urllib.request.urlopen(f"{base}/_sim/log") as answer:
            log = orjson.loads(answer.read())
    return summarize(log, limit)


def summarize(log: list[list[Any]], limit: int) -> dict[str, Any]:
    start = log[0][0]
    seconds = int(log[-1][0] - start)
    served = [0] * (seconds + 1)
    limited = [0] * (seconds + 1)
    for when, status in log:
        second = int(when - start)
        if status == 429:
            limited[second] += 1
        else:
            served[second] += 1
    full = seconds  # the last second is partial
    settle = next((i for i in range(full) if all(s >= 0.9 * limit for s in served[i:full])), full)
    after_served = sum(served[settle:full])
    after_limited = sum(limited[settle:full])
    span = max(full - settle, 1)
    return {
        "settle_s": settle,
        "achieved": after_served / span / limit,
        "share_429_after": after_limited / max(after_served + after_limited, 1),
        "total_429": sum(limited),
        "requests": len(log),
    }


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
    print(
        f"fixed 1 s windows, {LATENCY * 1000:.0f} ms latency, --concurrency 64, "
        f"about {seconds:g} s of calls per run"
    )
    print(
        f"{'limit':>6} {'mode':<11} {'settle s':>8} {'rate/limit':>10} {'429 share':>10} "
        f"{'429s':>5} {'requests':>8}"
    )
    for limit in (20, 100, 500):
        for mode, rate in (("configured", float(limit)), ("adaptive", None)):
            r = measure(limit, rate, 64, seconds)
            print(
                f"{limit:>6} {mode:<11} {r['settle_s']:>8} {r['achieved']:>10.3f} "
                f"{r['share_429_after']:>10.4f} {r['total_429']:>5} {r['requests']:>8}"
            )
    print("adaptive at 100/s: 429s over the whole run by --concurrency")
    for concurrency in (8, 64):
        r = measure(100, None, concurrency, seconds)
        print(
            f"  --concurrency {concurrency:<3} {r['total_429']:>4} 429s of {r['requests']} "
            f"requests, rate/limit {r['achieved']:.3f}"
        )


if __name__ == "__main__":
    main()

"""Peak memory of `harvester run` by input size, and across a kill and resume.

    python bench/memory.py [SMALL] [LARGE] [LINES]

Runs the real command against the simulator (open world, its own process) on
  - SMALL distinct calls, then LARGE distinct calls: peak RSS should not grow with the input;
  - a LINES-line call list (SMALL distinct ids repeated): read as a stream, duplicates found in
    the ledger, killed (SIGKILL) half-way and resumed; peak RSS of both runs.
Peak RSS is each process's own VmHWM, read from /proc while it runs. Default sizes: 3,000,
300,000, 10,000,000.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simproc import running_simulator

from harvester.sim.server import call_id_for


def run(
    env: dict[str, str], calls: Path, output: Path, kill_after: float | None = None
) -> tuple[float, int, float]:
    """(seconds, exit code or -signal, peak RSS in MB) of one `harvester run`."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harvester",
            "run",
            "-i",
            str(calls),
            "-o",
            str(output),
            "--no-progress",
            "--concurrency",
            "16",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    deadline = None if kill_after is None else started + kill_after
    while process.poll() is None:
        peak = max(peak, high_water_kb(process.pid))
        if deadline is not None and time.perf_counter() >= deadline:
            process.send_signal(signal.SIGKILL)
            process.wait()
            break
        time.sleep(0.02)
    return time.perf_counter() - started, process.returncode, peak / 1024


def high_water_kb(pid: int) -> int:
    """The process's own peak resident set (VmHWM), in KiB; 0 once it is gone.

    (wait4's ru_maxrss is no use here: Linux carries the parent's peak into a child across
    fork and exec, so every child would seem at least as big as this benchmark.)
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    small = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000
    large = int(sys.argv[2]) if len(sys.argv) > 2 else 300_000
    lines = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000_000
    rows = []
    with tempfile.TemporaryDirectory() as folder, running_simulator("--open-world") as env:
        work = Path(folder)
        for size in (small, large):
            calls = work / f"calls-{size}.txt"
            calls.write_text("".join(f"{call_id_for(1, i)}\n" for i in range(size)))
            seconds, code, rss = run(env, calls, work / f"out-{size}" / "events.ndjson")
            rows.append((f"{size:,} calls", seconds, code, rss))

        repeated = work / "calls-repeated.txt"
        block = "".join(f"{call_id_for(2, i)}\n" for i in range(small))
        with repeated.open("w") as f:
            for _ in range(lines // small):
                f.write(block)
        output = work / "out-repeated" / "events.ndjson"
        full = run(env, repeated, work / "out-probe" / "events.ndjson")
        killed = run(env, repeated, output, kill_after=full[0] / 2)
        resumed = run(env, repeated, output)
        rows.append((f"{lines:,} lines, uninterrupted", *full))
        rows.append((f"{lines:,} lines, killed half-way", *killed))
        rows.append((f"{lines:,} lines, resumed", *resumed))

    print(f"{'run':<34} {'seconds':>8} {'exit':>5} {'peak RSS MB':>12}")
    for name, seconds, code, rss in rows:
        print(f"{name:<34} {seconds:>8.1f} {code:>5} {rss:>12.1f}")
    print(f"peak RSS ratio {large:,} / {small:,} calls: {rows[1][3] / rows[0][3]:.2f}")
    biggest = max(r[3] for r in rows[2:])
    print(f"peak RSS ratio {lines:,} lines / {small:,} calls: {biggest / rows[0][3]:.2f}")


if __name__ == "__main__":
    main()

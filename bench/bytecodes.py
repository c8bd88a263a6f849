"""Bytecodes per call, function by function: harvester against the minimal loop.

    python bench/bytecodes.py [SMALL] [LARGE] [CONCURRENCY] [--top N]

Runs ``bench/baseline.py`` and ``bench/harvester_run.py`` on SMALL and on LARGE calls against
the simulator (open world), each under a tracer that counts the bytecodes every Python function
runs (``sys.settrace`` with opcode events, on every thread), and prints the difference per call:
start-up and imports cancel out. Code in C (orjson, SQLite, uvloop, the interpreter's own
objects) is not counted; ``bench/instructions.py`` counts everything, this says where in our
Python it goes. The counted runs commit by count only, as ``bench/instructions.py``'s do. The
tracer slows a run some tenfold: the limiter's ramp, timed by the round trips, takes longer,
and its share here is larger than at full speed.
"""

from __future__ import annotations

import collections
import runpy
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from simproc import COMMITS_BY_COUNT, running_simulator, write_ids

from harvester.sim.server import SIM_USER_ID

HERE = Path(__file__).parent
CLIENTS = {"baseline": HERE / "baseline.py", "harvester": HERE / "harvester_run.py"}


def main() -> None:
    arguments = sys.argv[1:]
    if arguments and arguments[0] == "--trace":
        trace(Path(arguments[1]), arguments[2:])
        return
    top = 25
    if "--top" in arguments:
        at = arguments.index("--top")
        top = int(arguments[at + 1])
        del arguments[at : at + 2]
    small = int(arguments[0]) if arguments else 300
    large = int(arguments[1]) if len(arguments) > 1 else 1300
    concurrency = arguments[2] if len(arguments) > 2 else "16"
    with tempfile.TemporaryDirectory() as folder, running_simulator("--open-world") as env:
        work = Path(folder)
        counted = {
            name: per_call(script, small, large, concurrency, env, work)
            for name, script in CLIENTS.items()
        }
    report(counted, large - small, concurrency, top)


def per_call(
    script: Path, small: int, large: int, concurrency: str, env: dict[str, str], work: Path
) -> dict[str, float]:
    """Bytecodes per call of each function of ``script``'s run: LARGE calls less SMALL."""
    counts = []
    for calls in (small, large):
        ids = write_ids(work / f"ids-{calls}.txt", calls)
        out = work / "counts.json"
        command = [sys.executable, __file__, "--trace", str(out), str(script)]
        command += [env["CATAPULT_BASE_URL"], SIM_USER_ID, str(ids), str(work / "out.ndjson")]
        command += [concurrency]
        run_env = {**env, "PYTHONPATH": f"{HERE.parent}:{HERE}", **COMMITS_BY_COUNT}
        subprocess.run(command, env=run_env, capture_output=True, check=True)
        counts.append(collections.Counter(orjson.loads(out.read_bytes())))
    counts[1].subtract(counts[0])
    return {name: count / (large - small) for name, count in counts[1].items()}


def report(counted: dict[str, dict[str, float]], calls: int, concurrency: str, top: int) -> None:
    base, ours = counted["baseline"], counted["harvester"]
    print(f"bytecodes per call ({calls} calls' difference), concurrency {concurrency}")
    print(f"minimal loop {sum(base.values()):8.0f}")
    print(f"harvester    {sum(ours.values()):8.0f}")
    print(f"harvester / minimal loop: {sum(ours.values()) / sum(base.values()):.3f}")
    print(f"\nthe {top} functions harvester runs most more of (per call: more, loop, harvester)")
    names = sorted(set(base) | set(ours), key=lambda n: base.get(n, 0) - ours.get(n, 0))
    for name in names[:top]:
        mine, theirs = ours.get(name, 0.0), base.get(name, 0.0)
        print(f"{mine - theirs:8.1f} {theirs:8.1f} {mine:8.1f}  {name}")


def trace(out: Path, command: list[str]) -> None:
    """Run the script ``command`` names, counting the bytecodes of each function; the counts
    go to ``out`` (JSON) when it ends."""
    counts: collections.Counter[str] = collections.Counter()
    names: dict[Any, str] = {}

    def called(frame: FrameType, event: str, _: object) -> Any:
        if event != "call":
            return None
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        return stepped

    def stepped(frame: FrameType, event: str, _: object) -> Any:
        if event == "opcode":
            code = frame.f_code
            name = names.get(code)
            if name is None:
                where = code.co_filename.replace(str(HERE.parent) + "/", "")
                for library in ("site-packages/", f"python3.{sys.version_info[1]}/"):
                    where = where.rsplit(library, 1)[-1]
                name = names[code] = f"{where}:{code.co_firstlineno} {code.co_name}"
            counts[name] += 1
        return stepped

    sys.argv = command
    sys.path.insert(0, str(Path(command[0]).parent))
    threading.settrace(called)
    sys.settrace(called)
    try:
        runpy.run_path(command[0], run_name="__main__")
    finally:
        sys.settrace(None)
        threading.settrace(None)
        out.write_bytes(orjson.dumps(counts))


if __name__ == "__main__":
    main()

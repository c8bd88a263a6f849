"""The call list's reader alone, before and after: lines/s, CPU, peak RSS and the event loop's
stalls while it reads.

    python bench/input.py [LINES] [REVISION]

Builds a LINES-line call list (plain text, then gzip; ids as bench/memory.py makes them) and
reads it through ``RecordFeed`` as the pool does (``batch(1024)`` until the end), with the
source module of REVISION (default 573a1c5, the last with the reader thread: ``git show``
into a temporary file) and with this tree's. Each read is a process of its own, run in turns,
three rounds; the best time of each is printed, and its median peak RSS (which moves by a few
tenths of a megabyte from one process to the next). Each process loads what `harvester run`
loads and sets glibc's mmap threshold as it does; after each batch it yields to the event loop
once, as the pool's hop to the journal's thread does. Peak RSS is the process's own VmHWM
(interpreter and imports included); a stall is how late a 5 ms timer on the same loop fired.
Default: 10,000,000 lines.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harvester.sim.server import call_id_for

BEFORE = "573a1c5"
BATCH = 1024  # harvester.run.job.FILE_BATCH
TICK = 0.005


def child(source_file: str, spec: str) -> None:
    """Read ``spec`` with the RecordFeed of ``source_file``; print the figures as JSON."""
    # The process as `harvester run` has it: every module loaded, glibc's mmap threshold set.
    from harvester.cli.commands import _steady_memory

    _steady_memory()
    # A reader of a revision before the stages became subpackages imports its modules by
    # their old names: the same modules, here.
    for old_name, new_name in {"harvester.chunks": "harvester.input.chunks"}.items():
        sys.modules[old_name] = importlib.import_module(new_name)
    loaded = importlib.util.spec_from_file_location("reader_under_test", source_file)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    sys.modules[loaded.name] = module  # dataclasses look their module up there
    loaded.loader.exec_module(module)

    async def drain() -> dict[str, Any]:
        stalls: list[float] = []

        async def ticker() -> None:
            while True:
                before = time.perf_counter()
                await asyncio.sleep(TICK)
                stalls.append(time.perf_counter() - before - TICK)

        ticking = asyncio.ensure_future(ticker())
        started, cpu = time.perf_counter(), time.process_time()
        feed = module.RecordFeed(spec)
        records = 0
        try:
            await feed.opened()
            while batch := await feed.batch(BATCH):
                records += len(batch)
                await asyncio.sleep(0)  # the pool's hop to the journal's thread per batch
        finally:
            feed.close()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        ticking.cancel()
        stalls.sort()
        return {
            "records": records,
            "seconds": seconds,
            "cpu": cpu,
            "stall_p99_ms": 1000 * stalls[int(len(stalls) * 0.99)] if stalls else 0.0,
            "stall_max_ms": 1000 * stalls[-1] if stalls else 0.0,
        }

    figures = asyncio.run(drain())
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                figures["rss_mb"] = int(line.split()[1]) / 1024
    print(json.dumps(figures))


def run(source_file: Path, spec: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(source_file), str(spec)],
        capture_output=True,
        check=True,
        text=True,
    )
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def reader_of(here: Path, revision: str) -> bytes:
    """The call list's reader as ``revision`` has it, wherever the layout then kept it."""
    for path in ("harvester/input/source.py", "harvester/source.py"):
        shown = subprocess.run(
            ["git", "-C", str(here), "show", f"{revision}:{path}"], capture_output=True
        )
        if shown.returncode == 0:
            return shown.stdout
    raise SystemExit(f"{revision} has no call list reader")


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    revision = sys.argv[2] if len(sys.argv) > 2 else BEFORE
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        before = work / "source_before.py"
        before.write_bytes(reader_of(here, revision))
        after = work / "source_after.py"
        shutil.copy(here / "harvester" / "input" / "source.py", after)

        plain = work / "calls.txt"
        block = "".join(f"{call_id_for(2, i)}\n" for i in range(3000)).encode()
        with plain.open("wb") as f:
            for _ in range(lines // 3000):
                f.write(block)
        packed = work / "calls.txt.gz"
        with plain.open("rb") as source, gzip.open(packed, "wb", compresslevel=6) as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        expected = lines // 3000 * 3000

        rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(3):
            for spec in (plain, packed):
                for name, source_file in ((revision, before), ("this tree", after)):
                    figures = run(source_file, spec)
                    assert figures["records"] == expected, figures
                    rounds.setdefault((spec.name, name), []).append(figures)
    best = {}
    for key, runs in rounds.items():
        best[key] = min(runs, key=lambda figures: figures["seconds"])
        best[key]["rss_mb"] = statistics.median(figures["rss_mb"] for figures in runs)

    print(f"{expected:,} lines through RecordFeed.batch({BATCH}), 3 rounds, own process each")
    print(
        f"{'input':<13} {'reader':<10} {'lines/s':>10} {'s':>6} {'CPU s':>6} "
        f"{'RSS MB':>7} {'stall p99 ms':>13} {'max ms':>7}"
    )
    for (spec_name, name), row in best.items():
        print(
            f"{spec_name:<13} {name:<10} {expected / row['seconds']:>10,.0f} "
            f"{row['seconds']:>6.2f} {row['cpu']:>6.2f} {row['rss_mb']:>7.1f} "
            f"{row['stall_p99_ms']:>13.1f} {row['stall_max_ms']:>7.1f}"
        )
    for spec_name in (plain.name, packed.name):
        old, new = best[(spec_name, revision)], best[(spec_name, "this tree")]
        print(
            f"{spec_name}: time after/before {new['seconds'] / old['seconds']:.2f}, "
            f"peak RSS after/before {new['rss_mb'] / old['rss_mb']:.2f}"
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()

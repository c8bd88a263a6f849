"""harvester on the same job as bench/baseline.py, through its library entry point.

    python bench/harvester_run.py BASE_URL USER_ID IDS_FILE OUTPUT CONCURRENCY
Runs on uvloop where it installs (see eventloop.py). Prints one JSON line: calls, events,
seconds, cpu_s, loop.
"""

from __future__ import annotations

import os
import sys
import time

import eventloop
import orjson

from harvester.run.job import harvest
from harvester.settings.load import load_settings


def main(base: str, user: str, ids_file: str, output: str, concurrency: int) -> None:
    settings = load_settings(
        {
            "input": ids_file,
            "output": output,
            "base_url": base,
            "user_id": user,
            "concurrency": concurrency,
            "progress": False,
        },
        os.environ,
    )
    started, cpu = time.perf_counter(), time.process_time()
    stats = eventloop.run(harvest(settings, fresh=True))
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    assert stats.failed == 0, stats
    print(
        orjson.dumps(
            {
                "calls": stats.calls,
                "events": stats.events,
                "seconds": seconds,
                "cpu_s": cpu_s,
                "loop": eventloop.NAME,
            }
        ).decode()
    )


if __name__ == "__main__":
    base, user, ids_file, output, concurrency = sys.argv[1:6]
    main(base, user, ids_file, output, int(concurrency))

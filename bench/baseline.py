"""The yardstick: a minimal hand-written aiohttp loop doing harvester's fetch-parse-write.

N workers take ids from a list, GET the events, parse them with orjson, add callId, and append
the lines to one file. No retries, no limiter, no validation: the least work the job needs.

    python bench/baseline.py BASE_URL USER_ID IDS_FILE OUTPUT CONCURRENCY
Runs on uvloop where it installs (see eventloop.py). Prints one JSON line: calls, events,
seconds, cpu_s, loop.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time

import aiohttp
import eventloop
import orjson


async def main(base: str, user: str, ids_file: str, output: str, concurrency: int) -> None:
    ids = open(ids_file).read().split()  # noqa: SIM115
    token = base64.b64encode(
        f"{os.environ['CATAPULT_API_TOKEN']}:{os.environ['CATAPULT_API_SECRET']}".encode()
    ).decode()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for call_id in ids:
        queue.put_nowait(call_id)
    events = 0
    out = open(output, "wb")  # noqa: SIM115
    started, cpu = time.perf_counter(), time.process_time()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal events
        while not queue.empty():
            call_id = queue.get_nowait()
            url = f"{base}/v1/users/{user}/calls/{call_id}/events"
            async with session.get(url) as response:
                body = await response.read()
            found = orjson.loads(body)
            events += len(found)
            out.write(b"".join(orjson.dumps({"callId": call_id, **e}) + b"\n" for e in found))

    headers = {"Authorization": f"Basic {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    out.close()
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    print(
        orjson.dumps(
            {
                "calls": len(ids),
                "events": events,
                "seconds": seconds,
                "cpu_s": cpu_s,
                "loop": eventloop.NAME,
            }
        ).decode()
    )


if __name__ == "__main__":
    base, user, ids_file, output, concurrency = sys.argv[1:6]
    eventloop.run(main(base, user, ids_file, output, int(concurrency)))

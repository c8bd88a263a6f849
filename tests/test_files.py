"""The summary's and the metrics file's one writer: a reader sees the old file or the whole new
one, whatever happens while it is written; and the daemon thread that reads may block for good.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from harvester.store.files import replace_file
from harvester.threads import DaemonExecutor

from .conftest import until


async def test_a_new_file_is_written_whole_and_readable_by_a_collector(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "folder" / "summary.json"
    await replace_file(target, b'{"status": "completed"}\n')
    assert target.read_bytes() == b'{"status": "completed"}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


async def test_a_failed_write_leaves_the_old_file_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "harvester.prom"
    target.write_bytes(b"old, whole\n")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await replace_file(target, b"new " * 100_000, fsync=disk_full)

    assert target.read_bytes() == b"old, whole\n"
    assert [p.name for p in tmp_path.iterdir()] == ["harvester.prom"]  # no temporary file left


async def test_a_write_cancelled_half_way_leaves_the_old_file_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "harvester.prom"
    target.write_bytes(b"old, whole\n")
    reached, released = threading.Event(), threading.Event()

    def slow_disk(fd: int) -> None:  # on the thread the fsync runs on
        reached.set()
        released.wait(60)

    writing = asyncio.ensure_future(replace_file(target, b"new " * 100_000, fsync=slow_disk))
    try:
        await until(reached.is_set, "the fsync under way")
        writing.cancel()  # as the progress ticker is at the end of a run
        with pytest.raises(asyncio.CancelledError):
            await writing
        # The temporary file's removal, shielded, finishes on its own.
        await until(
            lambda: [p.name for p in tmp_path.iterdir()] == ["harvester.prom"],
            "the temporary file removed",
        )
        assert target.read_bytes() == b"old, whole\n"
    finally:
        released.set()  # the disk answers at last: the thread is free again


async def test_a_reader_never_sees_part_of_a_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    versions = [b"a" * 10, b"b" * 300_000]  # shorter and longer: a file rewritten in place
    await replace_file(target, versions[0])  # would be seen cut, or empty, or mixed
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(target.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            await replace_file(target, versions[i % 2])
    finally:
        stop.set()
        thread.join()
    assert seen <= set(versions) and len(seen) == 2


def test_the_daemon_executor_runs_calls_in_order_and_never_holds_the_exit() -> None:
    executor = DaemonExecutor("test-daemon")
    order: list[int] = []
    blocked = threading.Event()
    futures = [executor.submit(order.append, i) for i in range(5)]
    executor.submit(blocked.wait)  # a read that does not return (yet)
    last = executor.submit(order.append, 99)
    assert [f.result(timeout=5) for f in futures] == [None] * 5 and order == [0, 1, 2, 3, 4]
    executor.shutdown()  # returns at once, though a call is stuck
    time.sleep(0.05)
    assert not last.done()
    thread = next(t for t in threading.enumerate() if t.name == "test-daemon")
    assert thread.daemon
    blocked.set()
    assert last.result(timeout=5) is None and order[-1] == 99
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(RuntimeError):
        executor.submit(order.append, 100)


def test_a_failing_call_gives_its_error_to_its_future() -> None:
    executor = DaemonExecutor("test-daemon-errors")
    try:
        with pytest.raises(FileNotFoundError):
            executor.submit(os.stat, "/nonexistent/file").result(timeout=5)
        assert executor.submit(len, "four").result(timeout=5) == 4
    finally:
        executor.shutdown()

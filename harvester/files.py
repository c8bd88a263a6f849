"""File I/O off the event loop, through aiofiles: a thread for reads that may never return, and
files that readers must only ever see whole (the summary, the metrics file).

The journal writes its own files on its own disk thread; nothing here is part of a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiofiles
import aiofiles.os
import aiofiles.tempfile

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonExecutor(Executor):
    """Runs what it is given one call at a time, in order, on a daemon thread of its own.

    For reads that may block for good: a FIFO's ``open`` waits for a writer, a stdin may never
    end. asyncio's default executor, like any ``ThreadPoolExecutor``, is joined at exit, so such
    a read there would keep the process alive forever; a daemon thread is not waited for.
    Shutting down lets the calls already given run first (a file's close after its last read).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._shut = False
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if self._shut:
            raise RuntimeError("cannot run anything on an executor that was shut down")
        future: Future[T] = Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """End the thread once the calls given so far have run; never waits (whatever ``wait``
        says: a call may never return)."""
        if not self._shut:
            self._shut = True
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)


async def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the whole new one, never a
    part, and the new one is on disk when this returns.

    The data goes to a temporary file in the same folder, is fsynced, renamed over ``path``, and
    the folder is fsynced so that the rename survives a crash. Whatever fails (or a
    cancellation), ``path`` is left as it was and the temporary file is removed.
    """
    await aiofiles.os.makedirs(path.parent, exist_ok=True)
    temporary: str | None = None
    try:
        async with aiofiles.tempfile.NamedTemporaryFile(
            "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as file:
            temporary = str(file.name)
            await _fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide it from a collector
            await file.write(data)
            await file.flush()
            await _fsync(file.fileno())
        await aiofiles.os.replace(temporary, path)
        temporary = None
        await _fsync_folder(path.parent)
    finally:
        if temporary is not None:
            await asyncio.shield(_remove_quietly(temporary))


_fchmod = aiofiles.os.wrap(os.fchmod)
_fsync = aiofiles.os.wrap(os.fsync)


@aiofiles.os.wrap
def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):  # already gone, or the folder went: nothing more to do
        await aiofiles.os.remove(path)

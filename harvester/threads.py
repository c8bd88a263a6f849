"""A thread of its own for reads that may block for good (a FIFO's open, a stdin that never
ends): ``DaemonExecutor``, which nothing waits for at exit."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

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

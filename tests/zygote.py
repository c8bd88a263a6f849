"""Harvester processes for tests, forked from one that has harvester imported already.

A test that kills or signals a harvester needs a process of its own, but starting Python and
importing aiohttp and the rest costs half a second each time, most of such a test's time. This
process pays it once: it imports harvester, then forks one ``harvester ARGS`` per request. The
child runs ``cli.main`` as ``python -m harvester`` does, in a process of its own, with its own
pid, environment, signals and exit code; only the imports were done before the fork (and so
the interpreter's own settings, ``PYTHON*`` variables among them, are the zygote's).

Requests come on stdin, a JSON line each: ``{"args": [...], "env": {...}, "stderr": PATH}``
(``stderr`` may be null: discarded). Answers go to stdout, a JSON line each: ``{"started": PID}``
at once, then ``{"exited": PID, "code": N}`` when it ends (N as ``subprocess`` gives it: the exit
code, or minus the signal that ended it). It stays single-threaded, so that forking is safe,
and ends when stdin does (the test session is over).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from typing import Any

from harvester import cli  # what every forked harvester would import first: done once, here


def main() -> None:
    running: set[int] = set()
    pending = b""
    while True:
        # While children run, look at their ends every few milliseconds; else wait for work.
        readable, _, _ = select.select([0], [], [], 0.005 if running else None)
        if readable:
            chunk = os.read(0, 1 << 16)
            if not chunk:  # the test session is over: so is whatever it left running
                for pid in running:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                pid = os.fork()
                if pid == 0:
                    _harvester(json.loads(line))  # does not return
                running.add(pid)
                _say({"started": pid})
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                running.discard(pid)
                _say({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _harvester(request: dict[str, Any]) -> None:
    """In the child: ``harvester ARGS`` with the request's environment and stderr, no stdin and
    no stdout (as ``start_harvester`` gives them), then exit as ``python -m harvester`` does."""
    null = os.open(os.devnull, os.O_RDWR)
    stderr = request["stderr"]
    err = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if stderr else null
    os.dup2(null, 0)  # the request pipe, and the answer pipe below, are the zygote's alone
    os.dup2(null, 1)
    os.dup2(err, 2)
    os.closerange(3, 1 << 16)  # nothing else of the zygote's is the child's
    os.environ.clear()
    os.environ.update(request["env"])
    sys.exit(cli.main(request["args"]))


def _say(answer: dict[str, int]) -> None:
    os.write(1, json.dumps(answer).encode() + b"\n")


if __name__ == "__main__":
    main()

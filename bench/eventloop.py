"""The event loop of the benchmarks: uvloop, as harvester's own command uses where it installs.

Both clients and the simulator run on the same loop, so a ratio compares their own work, not
two loops; ``NAME`` says which one it was, for the report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

try:
    import uvloop

    NAME = "uvloop"
except ImportError:  # not built for this platform: asyncio's own, and the report says so
    NAME = "asyncio"

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the benchmarks' loop."""
    if NAME == "asyncio":
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


# `python -c` code that runs the harvester command on the benchmarks' loop (`harvester sim`
# calls asyncio.run, which takes the loop from the policy).
HARVESTER_ON_LOOP = (
    "import asyncio, sys\n"
    "try:\n"
    "    import uvloop\n"
    "    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
    "except ImportError:\n"
    "    pass\n"
    "from harvester.cli.commands import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)

"""``harvester sim``: serve the bundled Catapult API simulator (``harvester.sim.server``) on
loopback, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import signal
from typing import TYPE_CHECKING, Any

from harvester.settings.options import main_flag, path

if TYPE_CHECKING:  # the simulator (aiohttp's server) is imported only to serve
    from harvester.sim.server import SimConfig

EXIT_OK, EXIT_USAGE = 0, 2
SIM_HELP = "serve the bundled Catapult API simulator on loopback"

log = logging.getLogger("harvester")


def add_sim_command(commands: Any) -> argparse.ArgumentParser:
    """The ``sim`` subcommand and its flags, in groups. Its -h and --help are the command
    line's: -h lists the flags added by ``_main_flag``."""
    sim: argparse.ArgumentParser = commands.add_parser(
        "sim",
        allow_abbrev=False,
        add_help=False,
        help=SIM_HELP,
        description="Serve a stand-in for the Catapult API (events and list-calls endpoints) "
        "with basic auth, a fixed-window rate limit and injectable faults.",
    )
    serving = sim.add_argument_group("serving")
    _main_flag(
        serving,
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address to listen on (default 127.0.0.1)",
    )
    _main_flag(
        serving, "--port", type=_port, default=0, metavar="N", help="port (default 0: a free one)"
    )
    _main_flag(
        serving,
        "--ready-file",
        type=path,
        metavar="PATH",
        help="write the base URL here once serving",
    )
    _main_flag(
        serving, "--ids-file", type=path, metavar="PATH", help="write the registry's call ids here"
    )
    _call_options(sim.add_argument_group("the calls and their answers"))
    _limit_options(sim.add_argument_group("the rate limit"))
    _fault_options(sim.add_argument_group("faults"))
    return sim


def _main_flag(
    group: argparse._ArgumentGroup, *flags: str, brief: str | None = None, **options: Any
) -> None:
    """Add a flag most runs use: -h lists it, saying ``brief`` (by default, its help)."""
    main_flag(group.add_argument(*flags, **options), brief)


def _call_options(calls: argparse._ArgumentGroup) -> None:
    """The simulator's calls, and how it answers for them."""
    _main_flag(
        calls,
        "--calls",
        type=_count,
        default=1000,
        metavar="N",
        help="calls in the registry (default 1000)",
    )
    _main_flag(
        calls, "--seed", type=int, default=7, metavar="N", help="seed of the registry and of faults"
    )
    calls.add_argument(
        "--days",
        type=_positive,
        default=3.0,
        metavar="DAYS",
        help="the calls start over the days before today (3)",
    )
    _main_flag(calls, "--open-world", action="store_true", help="every well-formed call id exists")
    _main_flag(
        calls,
        "--latency",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="seconds before each answer",
    )
    calls.add_argument(
        "--return-latency",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="seconds each answer waits to leave, once the limit judged it: the way back",
    )
    calls.add_argument(
        "--events-page-size",
        type=_count,
        default=0,
        metavar="N",
        help="page events with Link headers",
    )
    calls.add_argument(
        "--list-cursor", action="store_true", help="call-list next links carry opaque cursors"
    )


def _limit_options(limit: argparse._ArgumentGroup) -> None:
    """The simulator's rate limit: its size, its window and its shape."""
    _main_flag(
        limit,
        "--rate-limit",
        type=_count,
        default=0,
        metavar="N",
        help="requests per window, then 429 (default 0: none)",
    )
    _main_flag(
        limit,
        "--window",
        type=_positive,
        default=1.0,
        metavar="SECONDS",
        help="rate-limit window in seconds (default 1)",
    )
    _main_flag(
        limit,
        "--limit-kind",
        choices=("fixed", "sliding", "bucket"),
        default="fixed",
        metavar="KIND",
        help="fixed windows (Catapult's), a sliding window, or a token bucket (default fixed)",
        brief="fixed (Catapult's; the default), sliding or bucket",
    )
    limit.add_argument(
        "--burst",
        type=_count,
        default=0,
        metavar="N",
        help="a token bucket's size (default: --rate-limit)",
    )
    limit.add_argument(
        "--limit-schedule",
        metavar="T:N,...",
        default="",
        help="from T seconds after the first request on, the limit is N (e.g. 10:200,30:50)",
    )


def _fault_options(faults: argparse._ArgumentGroup) -> None:
    """The faults the simulator injects."""
    _main_flag(
        faults,
        "--fault",
        action="append",
        default=[],
        metavar="KIND=P",
        help="inject a fault with probability P per request; kinds: "
        "500 502 503 504 reset truncate html slow 429 429-retry-after 429-bare",
        brief="inject a fault with probability P per request (500, reset, 429...)",
    )
    faults.add_argument(
        "--faults-on-list", action="store_true", help="inject --fault faults into the call list too"
    )
    faults.add_argument(
        "--max-faults-per-call",
        type=_count,
        default=2,
        metavar="N",
        help="faults a call sees in a row at most (default 2)",
    )
    faults.add_argument(
        "--faults-between",
        metavar="START:END",
        default="",
        help="inject faults only between these seconds from the first request (e.g. 0:3)",
    )
    faults.add_argument(
        "--fault-reset",
        type=_seconds,
        default=0.5,
        metavar="SECONDS",
        help="seconds ahead an injected 429 announces its reset (default 0.5)",
    )


def serve_sim(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; the exit code."""
    from harvester.sim.server import Simulator

    config = _config(args)
    if config is None:
        return EXIT_USAGE
    simulator = Simulator(config)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        url = await simulator.start(args.host, args.port)
        if args.ids_file is not None:
            args.ids_file.write_text("".join(f"{c}\n" for c in simulator.call_ids()))
        log.info("simulator serving %s", url)
        log.info(
            "use (paste into a shell): export CATAPULT_BASE_URL=%s CATAPULT_USER_ID=%s "
            "CATAPULT_API_TOKEN=%s CATAPULT_API_SECRET=%s",
            *(shlex.quote(value) for value in (url, config.user_id, config.token, config.secret)),
        )
        if args.ready_file is not None:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(url + "\n")
            tmp.replace(args.ready_file)
        try:
            await stop.wait()
        finally:
            await simulator.stop()

    try:
        asyncio.run(serve())
    except OSError as exc:
        log.error("error: cannot serve on %s:%s: %s", args.host, args.port, exc.strerror or exc)
        return EXIT_USAGE
    return EXIT_OK


def _config(args: argparse.Namespace) -> SimConfig | None:
    """The simulator's configuration from the flags; None (after saying why) when they do
    not make one."""
    from harvester.sim.server import FAULT_KINDS, SimConfig

    faults: dict[str, float] = {}
    for spec in args.fault:
        kind, _, probability = spec.partition("=")
        if kind not in FAULT_KINDS:
            log.error("error: unknown fault %r; kinds: %s", kind, " ".join(FAULT_KINDS))
            return None
        try:
            faults[kind] = float(probability or "0.1")
            if not 0 <= faults[kind] <= 1:
                raise ValueError
        except ValueError:
            log.error("error: --fault %s: the probability must be a number from 0 to 1", spec)
            return None
    config = SimConfig(
        calls=args.calls,
        seed=args.seed,
        rate_limit=args.rate_limit,
        window=args.window,
        latency=args.latency,
        return_latency=args.return_latency,
        events_page_size=args.events_page_size,
        days=args.days,
        list_cursor=args.list_cursor,
        faults_on_list=args.faults_on_list,
        open_world=args.open_world,
        faults=faults,
        max_faults_per_call=args.max_faults_per_call,
        limit_kind=args.limit_kind,
        burst=args.burst,
        fault_reset=args.fault_reset,
    )
    try:
        config.limit_schedule = {
            float(when): int(limit)
            for when, _, limit in (part.partition(":") for part in args.limit_schedule.split(","))
            if when
        }
        if args.faults_between:
            start, _, end = args.faults_between.partition(":")
            config.faults_from, config.faults_until = float(start), float(end or "inf")
    except ValueError:
        log.error("error: --limit-schedule takes T:N,... and --faults-between START:END")
        return None
    return config


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535; 0: a free one)")
    return port


def _count(text: str) -> int:
    """A whole number, 0 or more, for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return value


def _seconds(text: str) -> float:
    """Seconds, 0 or more, for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return value


def _positive(text: str) -> float:
    """A number above 0, for argparse."""
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value

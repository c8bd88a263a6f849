"""A job's identity: whether a run is the job its ledger records, and when it is not, which
setting differs, in words; a call list that only grew at its end is the same job, going on."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harvester.errors import ConfigError
from harvester.store.ledger import ledger_errors, state_dir
from harvester.store.state import JobState, load_state


def stored_identity(output: Path) -> dict[str, Any]:
    """The identity recorded by the job that writes ``output``; ConfigError when there is none."""
    ledger = state_dir(output) / "ledger.sqlite"
    if not ledger.exists():
        raise ConfigError(f"{output} has no harvester state beside it: nothing to retry")
    with ledger_errors(ledger), contextlib.closing(sqlite3.connect(ledger)) as connection:
        state = load_state(connection, ledger)
    if state is None:
        raise ConfigError(f"{output} has no harvester state beside it: nothing to retry")
    return state.identity


def grown(
    before: dict[str, Any], identity: dict[str, Any], grew: Callable[[dict[str, Any]], bool]
) -> bool:
    """True when ``identity`` differs from the job's (``before``) only by a call list that grew
    at its end."""
    same = {"size", "head_sha256"}
    others = (set(before) | set(identity)) - same
    changed = any(before.get(key) != identity.get(key) for key in others)
    return not changed and before != identity and grew(before)


def check_identity(state: JobState | None, identity: dict[str, Any]) -> None:
    """Refuse a run that is not the job ``state`` records (none: a new job, any run's), saying
    in words which setting differs (never the identity itself, whose hashes and layout are the
    ledger's)."""
    if state is None:
        return
    before = state.identity
    changed = {key for key in set(before) | set(identity) if before.get(key) != identity.get(key)}
    if changed:
        said = "; ".join(_differences(before, identity, changed))
        raise ConfigError(
            f"this output belongs to another run: {said}. Use the same settings as that run to "
            "resume it, or another --output, or --fresh to discard it and start over"
        )


def _differences(before: dict[str, Any], now: dict[str, Any], changed: set[str]) -> list[str]:
    """What differs between the job's identity ``before`` and this run's ``now``, a phrase a
    setting, in the order a person checks them."""
    said = []
    if "input" in changed or "window" in changed:
        said.append(_source_differs(before, now))
    elif changed & {"size", "head_sha256"}:
        said.append(
            f"its input file {now.get('input')} has changed since (other first lines or another "
            "size, and not only grown at its end)"
        )
    for key, what in _SETTINGS:
        if key in changed:
            said.append(
                f"{what} was {_value(before.get(key))} for it, and is {_value(now.get(key))} now"
            )
    known = {"input", "window", "size", "head_sha256", *(key for key, _ in _SETTINGS)}
    said.extend(f"its {key} was another" for key in sorted(changed - known))
    return said


# The settings of a job's identity but its source, and how a person names them.
_SETTINGS = (
    ("input_format", "--input-format (input_format)"),
    ("id_column", "--id-column (id_column)"),
    ("shard", "--shard"),
    ("user_id", "user_id"),
    ("events_path", "the output"),
    ("failures_path", "--failures"),
    ("calls_path", "--calls-output"),
)


def _source_differs(before: dict[str, Any], now: dict[str, Any]) -> str:
    """How the job's source (an input file, stdin, or a window of the call list) differs from
    this run's."""
    return f"it was started with {_source(before)}, not {_source(now)}"


def _source(identity: dict[str, Any]) -> str:
    window = identity.get("window")
    if isinstance(window, dict):
        return f"the window {window.get('since')} to {window.get('until') or 'now'}"
    if identity.get("input") == "-":
        return "a stream (stdin or a pipe)"
    return f"the input file {identity.get('input')}"


def _value(value: object) -> str:
    return "not given" if value is None else str(value)

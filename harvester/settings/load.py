"""``load_settings``: the one way ``Settings`` are made, from the config file < the environment <
the command-line flags (later wins), then checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harvester.settings.checks import validate
from harvester.settings.config import Settings
from harvester.settings.sources import (
    environment_names,
    from_environment,
    read_toml,
    warn_unknown_variables,
)

# The settings that name a window of the API's call list: the other source of calls than input.
_WINDOW_KEYS = ("since", "until", "yesterday", "nights")


def load_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_path: Path | None = None,
    *,
    now: datetime | None = None,
    name: Callable[[str], str] = str,
) -> Settings:
    """Merge the config file, the environment and the flags (later wins), then validate.

    ``flags`` holds only what the user gave on the command line (None means not given).
    ``now`` (the real time unless given) is when ``--yesterday`` and ``--deadline 06:00`` are
    reckoned from. Errors name a value as it was given: its key in the file, its environment
    variable, or what ``name`` makes of its key when given in ``flags`` (the key itself, as a
    library caller gives it; the command line passes ``flag_of``).
    """
    merged: dict[str, Any] = {}
    names: dict[str, str] = {}
    if config_path is not None:
        merged.update(read_toml(config_path))
        names.update((key, f"{key} (in {config_path})") for key in merged)
    for variable, key in environment_names().items():
        if environ.get(variable):
            merged[key] = from_environment(key, environ[variable], variable)
            names[key] = variable
    warn_unknown_variables(environ)
    given = {k: v for k, v in flags.items() if v is not None}
    names.update((key, name(key)) for key in given)
    # A source chosen on the command line sets aside the other one of the file or environment
    # (and a window, the file's other ways of naming one).
    if "input" in given:
        for key in _WINDOW_KEYS:
            merged.pop(key, None)
    elif any(key in given for key in _WINDOW_KEYS):
        merged.pop("input", None)
        for key in _WINDOW_KEYS:
            if key not in given:
                merged.pop(key, None)
    merged.update(given)
    return validate(merged, names, environ, now or datetime.now(UTC))

"""Where settings come from, before they are checked: the TOML config file, and the environment
(the variables that set a setting, and those that look meant to but set nothing)."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harvester.errors import ConfigError
from harvester.settings.config import CONFIG_KEYS, SECRETS, TYPES, nearest_key
from harvester.suggest import did_you_mean

log = logging.getLogger("harvester")

# Environment variable -> settings key: the API's own four; every other setting has
# HARVESTER_<KEY> (``environment_names``), and the config file HARVESTER_CONFIG.
ENVIRONMENT = {
    "CATAPULT_API_TOKEN": "api_token",
    "CATAPULT_API_SECRET": "api_secret",
    "CATAPULT_USER_ID": "user_id",
    "CATAPULT_BASE_URL": "base_url",
}
PREFIX = "HARVESTER_"
CONFIG_VARIABLE = "HARVESTER_CONFIG"


def read_toml(path: Path) -> dict[str, Any]:
    """The settings of the config file at ``path``, by key; a ``ConfigError`` that says how to
    fix it when the file cannot be read or holds a key that is no setting's."""
    try:
        data = read_config(path)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config file {path} does not exist (check --config, or HARVESTER_CONFIG)"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text, as TOML must be ({exc.reason} at byte "
            f"{exc.start})"
        ) from exc
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML{_where(exc)}: each line is `key = value`, "
            'a text value in quotes ("..."), a list in brackets; see config.example.toml'
        ) from exc
    if any(data.get(key) for key in SECRETS) and _readable_by_others(path):
        log.warning(
            "config file %s holds a secret and others can read it: chmod 600 %s (or keep the "
            "secret in the environment, CATAPULT_API_SECRET)",
            path,
            path,
        )
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        said = ", ".join(f"{key}{nearest_key(key)}" for key in unknown)
        raise ConfigError(
            f"config file {path}: unknown key(s) {said}; the keys are listed in config.example.toml"
        )
    return data


def environment_names() -> dict[str, str]:
    """Every environment variable that sets a setting, with its key: the API's own
    (CATAPULT_...), and HARVESTER_<KEY> for each other key of the config file."""
    names = dict(ENVIRONMENT)
    taken = set(ENVIRONMENT.values())
    names.update((PREFIX + key.upper(), key) for key in CONFIG_KEYS if key not in taken)
    return names


def from_environment(key: str, text: str, variable: str) -> Any:
    """A setting's value from the text of its environment variable: a switch takes the words
    a shell user writes for one; the rest is parsed as the file's would be."""
    if TYPES[key] is not bool:
        return text
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigError(
        f"{variable} must be true or false (1, yes or on; 0, no or off), not {text!r}"
    )


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """A HARVESTER_ or CATAPULT_ variable that sets nothing is said, with the name probably
    meant, not silently ignored; one for what a run does (``--dry-run``, ``--fresh``) is
    refused: a variable left set would do it to every run."""
    known = environment_names()
    names = [name.removeprefix(PREFIX) for name in [*known, CONFIG_VARIABLE]]
    for variable in environ:
        if variable in known or variable == CONFIG_VARIABLE:
            continue
        if variable.startswith(PREFIX):
            rest = variable.removeprefix(PREFIX)
            if rest in _COMMAND_LINE_ONLY:
                raise ConfigError(
                    f"{variable} is not read: {_COMMAND_LINE_ONLY[rest]} is what one run does, "
                    "given on its command line, not a setting of the job. Unset it"
                )
            key = rest.lower()
            if key in ENVIRONMENT.values():
                api = next(name for name, own in ENVIRONMENT.items() if own == key)
                what = key.removeprefix("api_").replace("_", " ")
                log.warning("%s is not read: the API's %s comes from %s", variable, what, api)
                continue
            # Compared without the prefix they share, which would make any two look alike.
            near = did_you_mean(rest, names).replace("did you mean ", f"did you mean {PREFIX}")
            log.warning("%s is not a setting of harvester, and is ignored%s", variable, near)
        elif variable.startswith("CATAPULT_"):
            near = did_you_mean(variable, ENVIRONMENT)
            if near:
                log.warning("%s is not read by harvester%s", variable, near)


# Flags of what one run does, which no environment variable sets.
_COMMAND_LINE_ONLY = {
    "DRY_RUN": "--dry-run",
    "FRESH": "--fresh",
    "INCLUDE_NOT_FOUND": "--include-not-found",
}


def _where(exc: BaseException) -> str:
    """Where in the file the parser stopped, read from its message: its words are not ours
    (and could quote the file), its position is a fact."""
    found = _POSITION.search(str(exc)) if isinstance(exc, tomllib.TOMLDecodeError) else None
    return f" at line {found[1]}, column {found[2]}" if found else ""


_POSITION = re.compile(r"at line (\d+), column (\d+)")


def read_config(path: Path) -> dict[str, Any]:
    """The TOML document at ``path`` (a file, or a pipe such as ``<(...)``, read once): at most
    ``CONFIG_BYTES``, UTF-8. Raises what reading, decoding or parsing it raises; a device or a
    longer file is an ``OSError`` of its own."""
    with path.open("rb") as file:
        if not stat.S_ISREG(mode := os.fstat(file.fileno()).st_mode) and not stat.S_ISFIFO(mode):
            raise OSError(errno.EINVAL, "not a file (a device or a socket?)")
        raw = file.read(CONFIG_BYTES + 1)
    if len(raw) > CONFIG_BYTES:
        raise OSError(errno.EFBIG, f"longer than {CONFIG_BYTES // 1024} KiB: not a config file")
    return tomllib.loads(raw.decode("utf-8"))


CONFIG_BYTES = 1024 * 1024


def _readable_by_others(path: Path) -> bool:
    """True when others than the owner may read ``path``; never for a credential systemd
    handed over (``LoadCredential=``): it is the service's alone, whatever its mode says (an
    ACL on systemd's own tmpfs shows as group bits)."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    try:
        if credentials and path.resolve().parent == Path(credentials).resolve():
            return False
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False

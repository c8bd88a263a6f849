"""Settings: loaded once, from a TOML file < the environment < command-line flags, into a frozen,
validated object. Every error message says how to fix the problem.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from harvester.credentials import Secret, check_base_url, check_proxy, proxy_from_environment
from harvester.credentials import redact_url as redact_url
from harvester.errors import ConfigError
from harvester.ids import is_user_id
from harvester.settings.options import flag_of, key_of_flag
from harvester.settings.shard import Shard
from harvester.settings.values import (
    FailureLimit,
    InputFormat,
    check_placeholders,
    parse_deadline,
    parse_duration,
    render_path,
)
from harvester.settings.window import Window, parse_window, parse_zone
from harvester.suggest import did_you_mean

log = logging.getLogger("harvester")

DEFAULT_BASE_URL = "https://api.catapult.inetwork.com"

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


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one ``harvester run`` needs, each value parsed once, at load. Field names
    are the TOML keys, but for ``window``, which ``since``, ``until``, ``yesterday`` and ``tz``
    make."""

    input: str | None = None
    input_format: InputFormat | None = None  # None: as the content says
    id_column: str | None = None  # the CSV column or NDJSON field of the ids
    output: Path | None = None
    failures: Path | None = None
    summary: Path | None = None
    base_url: str = DEFAULT_BASE_URL
    user_id: str = ""
    api_token: Secret = field(default_factory=lambda: Secret(""))
    api_secret: Secret = field(default_factory=lambda: Secret(""))
    concurrency: int = 8
    rate: float = 0.0
    max_attempts: int = 5
    max_rate_limited: int = 100
    timeout: float = 30.0
    max_body_mb: float = 4.0
    max_events: int = 10_000
    progress: bool = True
    quiet: bool = False  # nothing said unless the run fails (cron mails what a job says)
    grace: float = 10.0
    commit_calls: int = 1000
    commit_seconds: float = 5.0
    since: str | None = None
    until: str | None = None
    yesterday: bool = False  # the same as nights = 1
    nights: int | None = None  # the last N complete days, today excluded (harvester.run.nights)
    tz: str = "UTC"
    calls_output: Path | None = None
    shard: Shard | None = None
    list_page_size: int = 1000
    log_format: str = "text"
    log_every: float = 30.0
    metrics_file: Path | None = None
    max_failures: FailureLimit = field(default_factory=FailureLimit)
    fail_on_empty: bool = False
    max_duration: float | None = None  # seconds
    deadline: datetime | None = None  # the moment; a time of day is the next one after load
    window: Window | None = None
    today: date | None = None  # with nights: the day they end before, in tz, when loaded
    credentials_from: str = "CATAPULT_API_TOKEN and CATAPULT_API_SECRET"
    proxy: str | None = None

    def time_allowed(self, now: datetime) -> float | None:
        """Seconds a run starting ``now`` may take: the sooner of --max-duration and
        --deadline, if any."""
        limits = [] if self.max_duration is None else [self.max_duration]
        if self.deadline is not None:
            limits.append((self.deadline - now).total_seconds())
        return min(limits) if limits else None

    @property
    def failures_path(self) -> Path:
        """Where failed calls go: ``--failures``, or ``<output name>.failures.ndjson`` beside it
        (``.ndjson.gz`` when the output is compressed)."""
        if self.failures is not None:
            return self.failures
        assert self.output is not None
        name = self.output.name
        compressed = name.endswith(".gz")
        name = name.removesuffix(".gz")
        for suffix in (".ndjson", ".jsonl", ".json"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        return self.output.with_name(f"{name}.failures.ndjson{'.gz' if compressed else ''}")


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_SECRETS = ("api_token", "api_secret")
_PATHS = ("output", "failures", "summary", "calls_output", "metrics_file")
# Made from other keys, never given.
_DERIVED = ("window", "today", "credentials_from")
_WINDOW_KEYS = ("since", "until", "yesterday", "nights")
# Paths a night of its own must have ({date}); the summary and the metrics file are the run's.
_NIGHT_PATHS = ("output", "failures", "calls_output")
# The keys of a config file, and the settings a flag may set.
CONFIG_KEYS = tuple(name for name in _FIELDS if name not in _DERIVED)


def load_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_path: Path | None = None,
    *,
    now: datetime | None = None,
    as_flags: bool = False,
) -> Settings:
    """Merge the config file, the environment and the flags (later wins), then validate.

    ``flags`` holds only what the user gave on the command line (None means not given).
    ``now`` (the real time unless given) is when ``--yesterday`` and ``--deadline 06:00`` are
    reckoned from. Errors name a value as it was given: its key in the file, its environment
    variable, or its flag when ``as_flags`` (else its key, as a library caller gives it).
    """
    merged: dict[str, Any] = {}
    names: dict[str, str] = {}
    if config_path is not None:
        merged.update(_read_toml(config_path))
        names.update((key, f"{key} (in {config_path})") for key in merged)
    for variable, key in environment_names().items():
        if environ.get(variable):
            merged[key] = _from_environment(key, environ[variable], variable)
            names[key] = variable
    _warn_unknown_variables(environ)
    given = {k: v for k, v in flags.items() if v is not None}
    names.update((key, flag_of(key) if as_flags else key) for key in given)
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
    return _validate(merged, names, environ, now or datetime.now(UTC))


def _read_toml(path: Path) -> dict[str, Any]:
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
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    if any(data.get(key) for key in _SECRETS) and _readable_by_others(path):
        log.warning(
            "config file %s holds a secret and others can read it: chmod 600 %s (or keep the "
            "secret in the environment, CATAPULT_API_SECRET)",
            path,
            path,
        )
    unknown = sorted(set(data) - set(_FIELDS) | set(data) & set(_DERIVED))
    if unknown:
        said = ", ".join(f"{key}{_nearest_key(key)}" for key in unknown)
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


def _nearest_key(word: str) -> str:
    """Did you mean, for a setting's name: a flag's name with underscores is its key's typo."""
    key = key_of_flag("--" + word.replace("_", "-"))
    return f" (did you mean {key}?)" if key is not None else did_you_mean(word, CONFIG_KEYS)


def _from_environment(key: str, text: str, variable: str) -> Any:
    """A setting's value from the text of its environment variable: a switch takes the words
    a shell user writes for one; the rest is parsed as the file's would be."""
    if _TYPES[key] is not bool:
        return text
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigError(
        f"{variable} must be true or false (1, yes or on; 0, no or off), not {text!r}"
    )


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
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


def _validate(
    values: dict[str, Any], names: dict[str, str], environ: Mapping[str, str], now: datetime
) -> Settings:
    kwargs = {key: _coerce(key, value, names.get(key, key)) for key, value in values.items()}
    deadline = kwargs.pop("deadline", None)
    settings = Settings(**kwargs)
    for key in _PATHS:
        path = getattr(settings, key)
        if str(path) == "-":
            why = _NOT_STDOUT + (_TAIL if key == "output" else "")
            raise ConfigError(f"{names.get(key, key)} -: {why}")
        if path is not None:
            check_placeholders(names.get(key, key), str(path))
    _check_credentials(settings, names.get("user_id", "user_id"))
    _named(names.get("base_url", "base_url"), check_base_url, settings.base_url)
    proxy = settings.proxy
    if proxy is None and (found := proxy_from_environment(settings.base_url, environ)):
        names["proxy"], proxy = found
    if proxy is not None:
        _named(names.get("proxy", "proxy"), check_proxy, proxy)
    for key, (low, high) in _RANGES.items():
        _check_range(names.get(key, key), getattr(settings, key), low, high)
    if settings.id_column is not None and not settings.id_column.strip():
        raise ConfigError(f"{names.get('id_column', 'id_column')} is empty")
    if settings.log_format not in ("text", "json"):
        name = names.get("log_format", "log_format")
        raise ConfigError(f"{name} must be text or json, not {settings.log_format!r}")
    zone = _named(names.get("tz", "tz"), parse_zone, settings.tz)
    nights = _nights(settings, names)
    window = parse_window(settings.since, settings.until, False, zone, now)
    if (window is not None or nights) and settings.input is not None:
        raise ConfigError(
            "give either a call list (--input PATH, - for stdin) or a window of the API's call "
            "list (--nights N, --yesterday, or --since/--until), not both"
        )
    if nights and window is not None:
        raise ConfigError("give either --nights/--yesterday or --since/--until, not both")
    if nights:
        _check_night_paths(settings, names)
    if deadline is not None:
        deadline = _named(names.get("deadline", "deadline"), parse_deadline, deadline, now, zone)
    credentials_from = " and ".join(names.get(key, key) for key in _SECRETS)
    return _render_paths(
        dataclasses.replace(
            settings,
            nights=nights,
            window=window,
            today=now.astimezone(zone).date() if nights else None,
            deadline=deadline,
            credentials_from=credentials_from,
            proxy=proxy,
        ),
        names,
    )


# Why a written file cannot be stdout: what a run writes, it commits and resumes.
_NOT_STDOUT = (
    "harvester writes to files it can resume (each commit is recorded beside the file), not "
    "to stdout. Give a file path"
)
_TAIL = "; to read events as they come, `tail -f` the output (a .ndjson one)"


def _nights(settings: Settings, names: dict[str, str]) -> int | None:
    """How many nights the settings ask for: ``nights``, or 1 for ``yesterday``."""
    if settings.yesterday and settings.nights is not None:
        raise ConfigError("give either --yesterday or --nights N, not both (--yesterday is 1)")
    if settings.nights is not None:
        _check_range(names.get("nights", "nights"), settings.nights, 1, 366)
    return 1 if settings.yesterday else settings.nights


def _check_night_paths(settings: Settings, names: dict[str, str]) -> None:
    """Every night writes files of its own: each path a night writes must hold {date}."""
    for key in _NIGHT_PATHS:
        path = getattr(settings, key)
        if path is not None and str(path).count("{date}") > 1:
            raise ConfigError(
                f"{names.get(key, key)} {path} holds {{date}} more than once: give it once, in "
                "the file's name or in a folder's"
            )
        if path is not None and "{date}" not in str(path):
            raise ConfigError(
                f"{names.get(key, key)} {path} has no {{date}}: with --nights (or --yesterday) "
                "each night is a job of its own, with files of its own. Put {date} in it, "
                "such as events-{date}.ndjson.gz"
            )


_RANGES = {
    "concurrency": (1, 1000),
    "rate": (0, 100_000),
    "max_attempts": (1, 100),
    "max_rate_limited": (1, 100_000),
    "timeout": (0.001, 3600),
    "max_body_mb": (0.001, 4096),
    "max_events": (1, 100_000_000),
    "grace": (0, 3600),
    "commit_calls": (1, 1_000_000),
    "commit_seconds": (0.01, 3600),
    "list_page_size": (1, 1000),
    "log_every": (0.1, 86400),
}


def _check_credentials(settings: Settings, user_id_name: str) -> None:
    if not settings.user_id:
        raise ConfigError(
            "no user id: set CATAPULT_USER_ID, user_id in the config file, or --user-id"
        )
    if not is_user_id(settings.user_id):
        raise ConfigError(
            f"{user_id_name}: {settings.user_id!r} does not look like a Catapult user id "
            "(u-xxxxxxxx)"
        )
    if not settings.api_token or not settings.api_secret:
        raise ConfigError(
            "no API credentials: set CATAPULT_API_TOKEN and CATAPULT_API_SECRET "
            "(or api_token and api_secret in the config file)"
        )


def _render_paths(settings: Settings, names: dict[str, str]) -> Settings:
    """Fill ``{date}`` (the window's start date) and ``{shard}`` (K of K/N) in the paths; with
    nights, the paths of a night keep ``{date}`` for each night to fill."""
    for key in ("summary", "metrics_file"):
        path = getattr(settings, key)
        if settings.nights and path is not None and "{date}" in str(path):
            raise ConfigError(
                f"{names.get(key, key)} {path} holds {{date}}, but with --nights it is the run's, "
                "one for all its nights: give a path without {date}"
            )
    values: dict[str, Any] = {
        key: render_path(
            names.get(key, key),
            path,
            settings.window,
            settings.shard,
            keep_date=bool(settings.nights) and key in _NIGHT_PATHS,
        )
        for key in _PATHS
        if (path := getattr(settings, key)) is not None
    }
    return dataclasses.replace(settings, **values)


# The type each setting holds, None aside: the real types, not their names.
_TYPES = {
    name: next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    for name, hint in typing.get_type_hints(Settings).items()
}
# Settings given as text (or a TOML number) and parsed into a value of their own.
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "shard": lambda value: Shard.parse(str(value)),
    "input_format": InputFormat.parse,
    "max_failures": FailureLimit.parse,
    "max_duration": parse_duration,
    "deadline": lambda value: value,  # parsed last: it needs tz and the time of loading
}


def _coerce(key: str, value: Any, name: str) -> Any:
    if key not in _FIELDS or key in _DERIVED:
        raise ConfigError(f"unknown setting {key!r}{_nearest_key(key)}")
    expected = _TYPES[key]
    if isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
        return value
    if key in _PARSERS:
        return _named(name, _PARSERS[key], value)
    if key in _SECRETS:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string")
        return Secret(value)
    if expected is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a path")
        if not value.strip():
            raise ConfigError(f"{name} is empty: give a file path")
        path = Path(value)
        if path.name in ("", ".", ".."):
            raise ConfigError(f"{name} {value!r} names a folder: give a file path")
        return path
    if expected in (int, float):
        return _number(name, value, expected is int)
    if expected is bool:
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    raise ConfigError(f"{name} must be a string, not {value!r}")


def _named(name: str, parse: Callable[..., Any], *args: Any) -> Any:
    """``parse(*args)``, its error saying which setting was wrong, as the user named it."""
    try:
        return parse(*args)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _number(name: str, value: Any, whole: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    try:
        number = float(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, not {value!r}") from exc
    if not whole:
        return number
    if not number.is_integer():
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    return int(number)


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low:g} and {high:g}, not {value:g}")

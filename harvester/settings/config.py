"""Settings: every setting of a run, its type and its default, in one frozen value; the keys a
config file may hold. ``harvester.settings.load`` makes it, once, from the config file < the
environment < the command-line flags.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from harvester.credentials import Secret
from harvester.settings.options import key_of_flag
from harvester.settings.shard import Shard
from harvester.settings.values import FailureLimit, InputFormat
from harvester.settings.window import Window
from harvester.suggest import did_you_mean

DEFAULT_BASE_URL = "https://api.catapult.inetwork.com"


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
# The API's credentials: each held as a ``Secret``; a config file with one in it should be its
# owner's alone.
SECRETS = ("api_token", "api_secret")
# Made from other keys, never given.
_DERIVED = ("window", "today", "credentials_from")
# The keys of a config file, and the settings a flag may set.
CONFIG_KEYS = tuple(name for name in _FIELDS if name not in _DERIVED)
# The type each setting holds, None aside: the real types, not their names.
TYPES = {
    name: next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    for name, hint in typing.get_type_hints(Settings).items()
}


def nearest_key(word: str) -> str:
    """Did you mean, for a setting's name: a flag's name with underscores is its key's typo."""
    key = key_of_flag("--" + word.replace("_", "-"))
    return f" (did you mean {key}?)" if key is not None else did_you_mean(word, CONFIG_KEYS)

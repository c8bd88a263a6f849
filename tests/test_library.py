"""harvester from Python: the options it takes are those docs/python.md names, a misspelt one is
met with the right name, and a run says what it does through the application's own logging."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harvester import harvest
from harvester.errors import ConfigError, FatalApiError
from harvester.settings.config import CONFIG_KEYS
from harvester.sim.server import SIM_SECRET, SIM_TOKEN, SIM_USER_ID, Simulator

from .conftest import write_calls

PYTHON_PAGE = Path(__file__).parent.parent / "docs" / "python.md"


class Kept(logging.Handler):
    """The records that reach the root logger, as an application's handler sees them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self) -> list[str]:
        return [getattr(r, "event", "message") for r in self.records if r.name == "harvester"]


@pytest.fixture
def root_handler() -> Iterator[Kept]:
    """A handler on the root logger at INFO, as ``logging.basicConfig(level=logging.INFO)``
    sets one up, and nothing done to harvester's logger."""
    root = logging.getLogger()
    kept, level = Kept(), root.level
    root.addHandler(kept)
    root.setLevel(logging.INFO)
    try:
        yield kept
    finally:
        root.removeHandler(kept)
        root.setLevel(level)


@pytest.fixture
def sim_environment(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """The environment pointed at the simulator, as a library caller's would hold it."""
    monkeypatch.setenv("CATAPULT_BASE_URL", sim.base_url)
    monkeypatch.setenv("CATAPULT_USER_ID", SIM_USER_ID)
    monkeypatch.setenv("CATAPULT_API_TOKEN", SIM_TOKEN)
    monkeypatch.setenv("CATAPULT_API_SECRET", SIM_SECRET)
    return sim


async def test_a_library_run_logs_its_start_progress_and_summary_to_the_applications_handlers(
    sim_environment: Simulator, root_handler: Kept, tmp_path: Path
) -> None:
    sim = sim_environment
    sim.config.latency = 0.05
    calls = write_calls(tmp_path, sim.call_ids()[:6])

    stats = await harvest(
        input=str(calls), output=tmp_path / "e.ndjson", concurrency=1, log_every=0.1
    )

    assert (stats.status, stats.exit_code, stats.job["ok"]) == ("completed", 0, 6)
    said = root_handler.events()
    assert said[0] == "start" and said[-1] == "summary", said
    assert "progress" in said, "a long run is not silent"
    summary = root_handler.records[-1].getMessage()
    assert summary.startswith("6 calls: 6 ok, 0 failed;") and summary.endswith("exit 0")


async def test_a_library_run_that_fails_logs_its_summary_and_raises(
    sim_environment: Simulator, root_handler: Kept, tmp_path: Path
) -> None:
    sim_environment.config.secret = "another-secret"
    calls = write_calls(tmp_path, sim_environment.call_ids()[:3])

    with pytest.raises(FatalApiError) as raised:
        await harvest(input=str(calls), output=tmp_path / "e.ndjson", progress=False)

    assert "401" in str(raised.value)
    assert root_handler.events()[-1] == "summary"
    assert root_handler.records[-1].getMessage().endswith("exit 3")


@pytest.mark.parametrize(
    ("given", "meant"),
    [("commit_every", "commit_calls"), ("commit_interval", "commit_seconds")],
)
async def test_a_flags_name_given_to_the_library_is_met_with_its_key(
    sim_environment: Simulator, tmp_path: Path, given: str, meant: str
) -> None:
    options: dict[str, Any] = {given: 10}
    with pytest.raises(ConfigError) as raised:
        await harvest(input="x", output=tmp_path / "e.ndjson", **options)

    assert str(raised.value) == f"unknown setting {given!r} (did you mean {meant}?)"


def test_the_python_pages_options_are_the_keys_the_library_takes() -> None:
    section = PYTHON_PAGE.read_text()
    named = set(re.findall(r"`([a-z][a-z_]+)`", section))
    options = {"commit_calls", "commit_seconds", "progress", "log_every"}
    assert options <= named, "the keys that are not a flag's name are named"
    assert options <= set(CONFIG_KEYS)
    assert "the flags with underscores)" not in section

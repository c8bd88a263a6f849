"""A new user's slips, each said plainly with what was probably meant: a misspelt flag, zone,
config key, setting or placeholder; ``-o -``; every setting from the environment; the
simulator's hint pasted into a shell; the demo saying exactly what it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harvester.errors import ConfigError
from harvester.settings.config import CONFIG_KEYS
from harvester.settings.load import load_settings
from harvester.settings.options import flag_of
from harvester.settings.sources import environment_names

from .conftest import run_harvester

ENV = {"CATAPULT_API_TOKEN": "t", "CATAPULT_API_SECRET": "s", "CATAPULT_USER_ID": "u-abc"}
ROOT = Path(__file__).resolve().parent.parent


def test_a_misspelt_flag_gets_the_commands_usage_and_the_flag_meant(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    done = run_harvester(sim_process, "run", "--concurency", "3", "-i", "x", "-o", "y")
    assert done.returncode == 2
    said = done.stderr.decode()
    assert "usage: harvester run" in said, "run's own usage, not the top level's"
    assert "--concurency (did you mean --concurrency?)" in said
    status = run_harvester(sim_process, "status", "-o", "x", "--deadline", "06:00")
    assert status.returncode == 2 and b"usage: harvester status" in status.stderr
    assert b"did you mean" not in status.stderr, "status has no flag near --deadline"
    ouput = run_harvester(sim_process, "status", "--ouput", "x")
    assert ouput.returncode == 2 and b"--ouput (did you mean --output?)" in ouput.stderr
    # No abbreviation is taken for a flag: --fr is not --fresh (which discards progress).
    short = run_harvester(sim_process, "run", "--fr", "-i", "x", "-o", "y")
    assert short.returncode == 2 and b"unrecognized arguments: --fr" in short.stderr


def test_a_misspelt_zone_key_setting_or_placeholder_says_what_was_meant(tmp_path: Path) -> None:
    flags = {"input": "calls.txt", "output": Path("events.ndjson")}
    with pytest.raises(ConfigError, match=r"'Europe/Berln' \(did you mean Europe/Berlin\?\)"):
        load_settings({**flags, "tz": "Europe/Berln"}, ENV)
    config = tmp_path / "harvester.toml"
    config.write_text("concurency = 4\n")
    with pytest.raises(ConfigError, match=r"concurency \(did you mean concurrency\?\)"):
        load_settings(flags, ENV, config)
    # A library caller who takes a flag's name for its setting's.
    with pytest.raises(ConfigError, match=r"'commit_every' \(did you mean commit_calls\?\)"):
        load_settings({**flags, "commit_every": 10}, ENV)
    with pytest.raises(ConfigError, match=r"holds \{dat\}.*did you mean \{date\}\?"):
        load_settings({**flags, "output": Path("e-{dat}.ndjson")}, ENV, name=flag_of)


@pytest.mark.parametrize("flag", ["--output", "--failures", "--summary", "--metrics-file"])
def test_dash_is_no_file_to_write(
    sim_process: dict[str, str], tmp_path: Path, flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "calls.txt").write_text("c-abc\n")
    monkeypatch.chdir(tmp_path)
    args = ["-o", "events.ndjson"] if flag != "--output" else []
    done = run_harvester(sim_process, "run", "-i", "calls.txt", *args, flag, "-")
    assert done.returncode == 2, done.stderr
    assert f"{flag} -: harvester writes to files it can resume".encode() in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.txt"], "nothing made"


def test_every_setting_has_an_environment_variable_between_the_file_and_the_flags(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = environment_names()
    assert set(names.values()) == set(CONFIG_KEYS), "every key of the config file"
    config = tmp_path / "harvester.toml"
    config.write_text('concurrency = 2\nrate = 5.0\nquiet = false\noutput = "file.ndjson"\n')
    env = {
        **ENV,
        "HARVESTER_CONCURRENCY": "7",
        "HARVESTER_QUIET": "yes",
        "HARVESTER_INPUT": "calls.txt",
        "HARVESTER_CONCURENCY": "9",
    }
    settings = load_settings({"rate": 3.0}, env, config)
    assert settings.concurrency == 7, "the environment over the file"
    assert settings.rate == 3.0, "a flag over both"
    assert settings.quiet is True and settings.input == "calls.txt"
    assert "HARVESTER_CONCURENCY" in caplog.text and "HARVESTER_CONCURRENCY?" in caplog.text
    caplog.clear()
    load_settings({}, {**ENV, "HARVESTER_FOO": "1", "HARVESTER_QUITE": "1"}, config)
    assert "HARVESTER_FOO is not a setting of harvester, and is ignored\n" in caplog.text
    assert "HARVESTER_QUITE" in caplog.text and "HARVESTER_QUIET?" in caplog.text
    caplog.clear()
    load_settings({}, {**ENV, "HARVESTER_API_SECRET": "x", "CATAPULT_API_SECRT": "y"}, config)
    assert "HARVESTER_API_SECRET is not read: the API's secret comes from CATAPULT_API_SECRET" in (
        caplog.text
    )
    assert "CATAPULT_API_SECRT" in caplog.text and "CATAPULT_API_SECRET?" in caplog.text
    # What one run does is no setting of the job: not taken from the environment, and said.
    for variable in ("HARVESTER_DRY_RUN", "HARVESTER_FRESH"):
        with pytest.raises(ConfigError, match=f"{variable} is not read: --"):
            load_settings({}, {**ENV, variable: "1"}, config)
    with pytest.raises(ConfigError, match="HARVESTER_QUIET must be true or false"):
        load_settings({}, {**env, "HARVESTER_QUIET": "maybe"}, config)
    with pytest.raises(ConfigError, match="HARVESTER_CONCURRENCY must be a number"):
        load_settings({}, {**env, "HARVESTER_CONCURRENCY": "many"}, config)


def test_the_config_file_from_the_environment(sim_process: dict[str, str], tmp_path: Path) -> None:
    ids = Path(sim_process["IDS_FILE"]).read_text().split()[:3]
    (tmp_path / "calls.txt").write_text("\n".join(ids) + "\n")
    config = tmp_path / "harvester.toml"
    output = tmp_path / "events.ndjson"
    config.write_text(f'input = "{tmp_path / "calls.txt"}"\noutput = "{output}"\n')
    done = run_harvester({**sim_process, "HARVESTER_CONFIG": str(config)}, "run", "-q")
    assert done.returncode == 0, done.stderr
    assert len(output.read_bytes().splitlines()) > 0


def test_the_simulators_hint_pastes_into_a_shell(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "harvester", "sim", "--port", "0", "--calls", "3"],
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = ""
        while "paste into a shell" not in line:
            line = process.stderr.readline().decode()
            assert line, "the simulator said no hint"
        command = line.split("paste into a shell): ", 1)[1].strip()
        shown = subprocess.run(
            ["sh", "-c", f'{command}; echo "$CATAPULT_BASE_URL $CATAPULT_API_SECRET"'],
            capture_output=True,
            check=True,
        )
        url, secret = shown.stdout.decode().split()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and secret
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_the_demo_says_exactly_the_commands_it_runs() -> None:
    script = (ROOT / "scripts" / "demo.sh").read_text()
    assert "show() {" in script
    runs = [
        line for line in script.splitlines() if re.match(r"\s*(show )?harvester (run|status)", line)
    ]
    assert runs and all(line.lstrip().startswith("show harvester") for line in runs)
    assert not re.search(r'echo "\$ harvester', script), "no command told apart from its run"


def test_help_says_what_each_command_takes(sim_process: dict[str, str]) -> None:
    status = run_harvester(sim_process, "status", "--help").stdout.decode()
    assert "--deadline" not in status, "status takes no --deadline"
    run = run_harvester(sim_process, "run", "--help").stdout.decode()
    assert "told by its content, not its name" in " ".join(run.split())

"""Settings: file < environment < flags, validated with messages that say what to do."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harvester.credentials import Secret
from harvester.errors import ConfigError
from harvester.settings.config import CONFIG_KEYS, Settings
from harvester.settings.load import load_settings
from harvester.settings.options import OPTIONS, flag_of
from harvester.settings.sources import ENVIRONMENT

ENV = {
    "CATAPULT_API_TOKEN": "t-token",
    "CATAPULT_API_SECRET": "s3cret-value",
    "CATAPULT_USER_ID": "u-fromenvironment",
}


def test_defaults() -> None:
    settings = load_settings({}, ENV)
    assert settings.base_url == "https://api.catapult.inetwork.com"
    assert (settings.concurrency, settings.rate, settings.max_attempts) == (8, 0.0, 5)
    assert settings.api_secret.reveal() == "s3cret-value"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "harvester.toml"
    config.write_text(
        'user_id = "u-fromfile"\nconcurrency = 3\nrate = 2.5\n'
        'base_url = "https://proxy.example.com/catapult"\n'
    )
    settings = load_settings({"concurrency": 5}, {**ENV, "CATAPULT_BASE_URL": ""}, config)
    assert settings.user_id == "u-fromenvironment"  # environment beats the file
    assert settings.concurrency == 5  # flags beat both
    assert settings.rate == 2.5  # the file beats the default
    assert settings.base_url == "https://proxy.example.com/catapult"


def test_the_example_config_is_valid_and_names_every_setting() -> None:
    example = Path(__file__).parent.parent / "config.example.toml"
    settings = load_settings({}, ENV, example)
    assert isinstance(settings, Settings)
    text = example.read_text()
    for name in CONFIG_KEYS:
        assert f"{name} =" in text, f"config.example.toml does not document {name}"


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({}, {**ENV, "CATAPULT_USER_ID": ""}, "no user id: set CATAPULT_USER_ID"),
        ({"user_id": "u-a/../b"}, ENV, "does not look like a Catapult user id"),
        ({}, {**ENV, "CATAPULT_API_SECRET": ""}, "no API credentials"),
        ({"base_url": "http://api.example.com"}, ENV, "plain http"),
        ({"base_url": "https://tok:sec@api.example.com"}, ENV, "must not hold credentials"),
        ({"base_url": "ftp://api.example.com"}, ENV, "must look like https://"),
        ({"base_url": "https://api.example.com/?x=1"}, ENV, "query or fragment"),
        ({"concurrency": 0}, ENV, "concurrency must be between 1 and 1000"),
        ({"rate": -1}, ENV, "rate must be between"),
        ({"max_attempts": 0}, ENV, "max_attempts must be between"),
        ({"timeout": 0}, ENV, "timeout must be between"),
    ],
)
def test_invalid_settings_say_how_to_fix_them(
    flags: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(flags, env)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "localhost", "[::1]"])
def test_plain_http_is_allowed_on_loopback(host: str) -> None:
    assert load_settings({"base_url": f"http://{host}:8080"}, ENV).base_url.startswith("http://")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("concurrency = 'many'", r"concurrency \(in .*c.toml\) must be a number"),
        ("concurrency = 2.5", "whole number"),
        ("progress = 'yes'", r"progress \(in .*c.toml\) must be true or false"),
        ("colour = 'blue'", "unknown key"),
        ("concurrency = ", "not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings({}, ENV, config)


def test_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, ENV, tmp_path / "absent.toml")


def test_secrets_never_print() -> None:
    settings = load_settings({}, ENV)
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in str(settings)
    assert str(Secret("x")) == "***"


def test_failures_file_sits_beside_the_output() -> None:
    settings = load_settings({"output": "out/events.ndjson"}, ENV)
    assert settings.failures_path == Path("out/events.failures.ndjson")
    other = load_settings({"output": "out/events.jsonl", "failures": "f.ndjson"}, ENV)
    assert other.failures_path == Path("f.ndjson")
    packed = load_settings({"output": "out/events-{date}.ndjson.gz", "since": "2026-11-25"}, ENV)
    assert packed.failures_path == Path("out/events-2026-11-25.failures.ndjson.gz")


@pytest.mark.parametrize(
    "url",
    [
        "htps://t0ken:s3cr3t@host",
        "t0ken:s3cr3t@host",
        "https:/t0ken:s3cr3t@host",
        "https:t0ken:s3cr3t@host",
        "http://t0ken:s3 cr3t@127.0.0.1",
        "http://:@127.0.0.1:8080",
        "https://host/?api_key=s3cr3t",
        "https://host/#s3cr3t",
    ],
)
def test_a_mistyped_base_url_is_refused_without_showing_its_secret(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"base_url": url}, ENV)
    for secret in ("t0ken", "s3cr3t", "s3 cr3t"):
        assert secret not in str(caught.value)


def test_every_flag_sets_a_config_key_and_every_key_has_a_flag() -> None:
    not_settings = {"config", "verbose", "fresh", "dry_run"}  # how to run, not what: no key
    dests = {
        option.dest or option.flags[0].removeprefix("--").replace("-", "_") for option in OPTIONS
    }
    assert dests - not_settings <= set(CONFIG_KEYS)
    keyed_by_environment_or_file = {"api_token", "api_secret"}
    assert set(CONFIG_KEYS) - keyed_by_environment_or_file <= dests


EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def example_lines() -> list[str]:
    """Every ``key = value`` of the example, given or shown commented out."""
    lines = (line.removeprefix("# ") for line in EXAMPLE.read_text().splitlines())
    return [line for line in lines if line.split(" = ")[0] in CONFIG_KEYS]


@pytest.mark.parametrize("line", example_lines())
def test_every_example_value_works_as_written(tmp_path: Path, line: str) -> None:
    config = tmp_path / "harvester.toml"
    given = [line]
    if line.startswith("until") or "{date}" in line:
        given.append('since = "2026-11-25"')  # what the example says it goes with
    text = "\n".join(given) + "\n"
    config.write_text(text)
    config.chmod(0o600)
    key, value = line.split(" = ")
    now = datetime(2026, 12, 1, 3, tzinfo=UTC)  # "yesterday" and a deadline, reckoned alike
    if value == '""':  # a credential left for the environment to give: it does
        assert load_settings({}, ENV, config, now=now) == load_settings({}, ENV, now=now)
        return
    # Read from the file, it is what the same value means as a flag (the environment kept
    # from giving the key, as it would beat the file).
    environ = {name: v for name, v in ENV.items() if ENVIRONMENT.get(name) != key}
    from_file = load_settings({}, environ, config, now=now)
    assert from_file == load_settings(tomllib.loads(text), environ, now=now)


@pytest.mark.parametrize(
    "flags", [{"yesterday": True}, {"since": "2026-11-25"}, {"input": "calls.txt"}]
)
def test_a_source_chosen_by_a_flag_sets_the_files_other_source_aside(
    tmp_path: Path, flags: dict[str, object]
) -> None:
    config = tmp_path / "harvester.toml"
    other = "yesterday = true" if "input" in flags else 'input = "-"'
    config.write_text(other + "\n")
    settings = load_settings(flags, ENV, config)
    assert (settings.input is None) == ("input" not in flags)
    assert (settings.window is None and settings.nights is None) == ("input" in flags)


def test_a_secret_others_can_read_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "harvester.toml"
    config.write_text('api_secret = "s3cr3t"\n')
    config.chmod(0o644)
    load_settings({}, ENV, config)
    assert "chmod 600" in caplog.text and "s3cr3t" not in caplog.text
    caplog.clear()
    config.chmod(0o600)
    load_settings({}, ENV, config)
    assert "chmod 600" not in caplog.text


def test_numbers_in_the_file_where_text_is_allowed_too(tmp_path: Path) -> None:
    config = tmp_path / "harvester.toml"
    config.write_text('max_failures = 5\nmax_duration = 90\nshard = "1/4"\n')
    settings = load_settings({}, ENV, config)
    assert settings.max_failures.allowed(1000) == 5
    assert settings.max_duration == 90
    assert settings.shard is not None and (settings.shard.index, settings.shard.count) == (1, 4)


def test_a_time_zone_that_is_not_one_is_named_as_given(tmp_path: Path) -> None:
    config = tmp_path / "harvester.toml"
    config.write_text('tz = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match=r"tz \(in .*harvester.toml\): unknown time zone"):
        load_settings({}, ENV, config)
    with pytest.raises(ConfigError, match=r"^--tz: unknown time zone"):
        load_settings({"tz": "Mars/Olympus"}, ENV, name=flag_of)


def test_a_credential_systemd_hands_over_is_not_taken_for_a_file_others_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's LoadCredential= puts the config on a tmpfs of the service's own, with an ACL
    that shows as group bits: no warning the operator cannot act on, every night."""
    config = tmp_path / "harvester.toml"
    config.write_text('api_secret = "s3cret"\n')
    config.chmod(0o440)
    flags = {"input": "calls.txt", "output": Path("events.ndjson"), "api_token": "t"}
    env = {"CATAPULT_USER_ID": "u-abc"}
    load_settings(flags, env, config)
    assert "others can read it" in caplog.text, "a plain file readable by its group: said"
    caplog.clear()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    load_settings(flags, env, config)
    assert "others can read it" not in caplog.text

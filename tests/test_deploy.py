"""The operator's kit in ``deploy/``: each recipe checked by the tool its users run it with
(systemd-analyze, kubernetes-validate, promtool), run as written against the simulator, and
each one linked from the page of docs/ that says how to use it.

A test that needs a tool the machine lacks is skipped, saying which and how to install it;
with ``REQUIRE_DEPLOY_TOOLS=1`` (``.ci/run`` sets it, after installing them) it fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harvester import __version__, exits
from harvester.sim.server import SIM_SECRET, SIM_TOKEN, SIM_USER_ID

from .conftest import simulator_process

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
SERVICE = DEPLOY / "systemd" / "harvester.service"
TIMER = DEPLOY / "systemd" / "harvester.timer"
RETRY = DEPLOY / "systemd" / "harvester-retry.service"
CRON = DEPLOY / "cron" / "harvester"
CRONJOB = DEPLOY / "kubernetes" / "cronjob.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"

INSTALL = {
    "systemd-analyze": "it comes with systemd (Debian: apt-get install systemd)",
    "promtool": "Debian: apt-get install prometheus",
    "kubernetes-validate": "pip install kubernetes-validate (in the dev extra)",
}


def tool(name: str) -> str:
    """The path of ``name``: the virtual environment's first, then the PATH's."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        message = f"{name} is not installed ({INSTALL[name]}); .ci/run installs it"
        if os.environ.get("REQUIRE_DEPLOY_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def harvester_command() -> str:
    """The installed ``harvester`` command (what a recipe's /usr/local/bin/harvester is)."""
    installed = Path(sys.executable).parent / "harvester"
    assert installed.exists(), f"no harvester command beside {sys.executable}: pip install -e ."
    return str(installed)


# -- the docs point at exactly these files --------------------------------------------------

# What a recipe looks like, wherever it is in the Markdown.
RECIPE = re.compile(r"^\[(Unit|Service|Timer)\]|^kind: |^CRON_TZ|^groups:|^\d+ \d+ \* \* \*", re.M)
# A relative link in a page of docs/.
LINK = re.compile(r"\]\((\.\./deploy/[^)#\s]+)\)")


def test_the_docs_point_at_every_deploy_file_and_copy_no_recipe() -> None:
    """Every file of deploy/ is linked from a page of docs/ (the page that says how to use it),
    and no Markdown file holds a recipe of its own, which would drift from the tested one."""
    linked = set()
    for page in (ROOT / "docs").glob("*.md"):
        linked |= {(page.parent / link).resolve() for link in LINK.findall(page.read_text())}
    for file in sorted(DEPLOY.rglob("*")):
        if file.is_file():
            name = file.relative_to(ROOT)
            assert file.resolve() in linked, f"no page of docs/ links to {name}"
    for markdown in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for block in re.findall(r"```[\w-]*\n(.*?)```", markdown.read_text(), re.DOTALL):
            assert not RECIPE.search(block), (
                f"a recipe in {markdown.name} that is no file of deploy/:\n{block[:300]}"
            )


# -- running a recipe against the simulator ---------------------------------------------------


@pytest.fixture(scope="module")
def week_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A simulator whose 80 calls started over the eight days before today."""
    with simulator_process(tmp_path_factory.mktemp("sim"), "--calls", "80", "--days", "8") as env:
        yield env


def installed_config(folder: Path) -> Path:
    """config.example.toml installed as docs/scheduling.md says: copied, the user id, API token and
    secret filled in, readable by its owner only."""
    text = (ROOT / "config.example.toml").read_text()
    for key, value in (
        ("user_id", SIM_USER_ID),
        ("api_token", SIM_TOKEN),
        ("api_secret", SIM_SECRET),
    ):
        text, filled = re.subn(rf"^{key} = .*$", f'{key} = "{value}"', text, flags=re.M)
        assert filled == 1, f"config.example.toml has no live {key} line to fill in"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "harvester.toml"
    config.write_text(text)
    config.chmod(0o600)
    return config


def api_only(env: dict[str, str]) -> dict[str, str]:
    """What a scheduler's environment holds (cron's: little), plus where the simulator is:
    no credential, which come from the config file."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": env.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "CATAPULT_BASE_URL": env["CATAPULT_BASE_URL"],
    }


def nights_in(folder: Path) -> list[Path]:
    """The nights' event files in ``folder`` (not their failures files)."""
    return [f for f in folder.glob("events-*.ndjson.gz") if ".failures." not in f.name]


def events_of(folder: Path) -> list[bytes]:
    """Every event line of the nights' outputs in ``folder`` (gzip or not)."""
    import gzip

    lines: list[bytes] = []
    for file in sorted(folder.rglob("events-*.ndjson.gz")):
        if ".failures." not in file.name:
            lines.extend(gzip.decompress(file.read_bytes()).splitlines())
    return lines


def metrics_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- systemd ----------------------------------------------------------------------------------


def unit_values(path: Path) -> dict[str, list[str]]:
    """``key -> values`` of a unit file, continuation lines joined, as systemd reads it."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_systemd_accepts_the_services_and_the_timer(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    for service in (SERVICE, RETRY):
        unit = service.read_text().replace("/usr/local/bin/harvester", harvester_command())
        (tmp_path / service.name).write_text(unit)
    shutil.copy(TIMER, tmp_path / TIMER.name)

    done = subprocess.run(
        [analyze, "verify", "--man=no", SERVICE.name, RETRY.name, TIMER.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_service_restarts_after_an_outage_and_nothing_a_person_must_mend() -> None:
    unit = unit_values(SERVICE)
    success = {int(code) for code in unit["SuccessExitStatus"][0].split()}
    no_restart = {int(code) for code in unit["RestartPreventExitStatus"][0].split()}
    assert unit["Type"] == ["oneshot"] and unit["Restart"] == ["on-failure"]
    assert success == {exits.DEADLINE, exits.RUNNING, exits.SIGTERM}
    assert no_restart == {
        exits.FAILURES,
        exits.USAGE,
        exits.FATAL_API,
        exits.OUTPUT,
        exits.EMPTY,
        exits.INTERNAL,
    }
    assert exits.UNAVAILABLE not in success | no_restart, "an outage is restarted"
    # The credentials: a file only root reads, handed to the service by systemd.
    assert unit["LoadCredential"] == ["harvester.toml:/etc/harvester/harvester.toml"]
    assert "--config ${CREDENTIALS_DIRECTORY}/harvester.toml" in unit["ExecStart"][0]
    assert "Environment" not in unit and "EnvironmentFile" not in unit
    timer = unit_values(TIMER)
    assert timer["OnCalendar"][0].endswith(" UTC") and timer["Persistent"] == ["true"]


def test_the_services_command_harvests_the_nights_with_the_example_config(
    week_sim: dict[str, str], tmp_path: Path
) -> None:
    """ExecStart as written, the paths systemd gives it moved into tmp_path, the config
    config.example.toml as docs/scheduling.md says to install it: every night, and again the next
    time with nothing to do, exit 0."""
    state, credentials, textfile = tmp_path / "state", tmp_path / "credentials", tmp_path / "tf"
    state.mkdir()
    installed_config(credentials)

    def run(service: Path) -> None:
        unit = unit_values(service)
        assert unit["WorkingDirectory"] == ["/var/lib/harvester"]
        command = (
            unit["ExecStart"][0]
            .replace("${CREDENTIALS_DIRECTORY}", str(credentials))
            .replace("/usr/local/bin/harvester", harvester_command())
            .replace("/var/lib/harvester", str(state))
            .replace("/var/lib/prometheus/node-exporter", str(textfile))
        )
        done = subprocess.run(
            shlex.split(command),
            cwd=state,
            env=api_only(week_sim),
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert SIM_SECRET.encode() not in done.stderr + done.stdout

    run(SERVICE)
    run(SERVICE)
    run(RETRY)  # the remedy, as the same user with the same config: nothing failed, exit 0

    summary = orjson.loads((state / "summary.json").read_bytes())
    assert summary["nights"] == 7 and summary["nights_behind"] == 0
    assert len(summary["by_night"]) == 7 and summary["version"] == __version__
    assert len(nights_in(state / "out")) == 7
    lines = events_of(state / "out")
    assert lines and len(set(lines)) == len(lines), "each event once"
    metrics = metrics_of((textfile / "harvester.prom").read_text())
    assert metrics[("harvester_last_exit_code", ())] == 0
    assert metrics[("harvester_nights_behind", ())] == 0


# -- cron -------------------------------------------------------------------------------------


def cron_lines() -> tuple[dict[str, str], list[str]]:
    """The variables of deploy/cron/harvester and its job lines."""
    variables: dict[str, str] = {}
    jobs: list[str] = []
    for line in CRON.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if re.match(r"^[A-Z_]+=", line):
            name, _, value = line.partition("=")
            variables[name] = value
        else:
            jobs.append(line)
    return variables, jobs


def test_the_cron_file_is_one_utc_job_that_says_nothing_unless_it_fails() -> None:
    text = CRON.read_text()
    variables, jobs = cron_lines()
    assert text.endswith("\n"), "cron ignores a last line without a newline"
    assert "." not in CRON.name, "run-parts and cron skip /etc/cron.d files with a dot"
    assert variables["CRON_TZ"] == "UTC"
    assert text.index("CRON_TZ=") < text.index(jobs[0]), "CRON_TZ before the job it sets"
    (job,) = jobs
    fields = job.split(None, 6)
    assert len(fields) == 7 and fields[5] == "harvester", "five times, a user, a command"
    command = fields[6]
    assert "%" not in command, "cron turns % into a newline"
    assert "--quiet" in command and "--nights" in command
    assert "--config /etc/harvester/harvester.toml" in command
    assert "CATAPULT_API" not in text, "no credential in the crontab"


def run_cron_job(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    """The job line's command, as cron runs it (``/bin/sh -c``, cron's small environment), its
    paths moved into ``tmp_path`` (the machine's root)."""
    _, (job,) = cron_lines()
    command = (
        job.split(None, 6)[6]
        .replace("/usr/local/bin/harvester", harvester_command())
        .replace("/etc/harvester", str(tmp_path / "etc"))
        .replace("/var/lib/harvester", str(tmp_path / "state"))
        .replace("/var/lib/prometheus/node-exporter", str(tmp_path / "tf"))
    )
    (tmp_path / "state").mkdir(parents=True, exist_ok=True)
    if not (tmp_path / "etc" / "harvester.toml").exists():
        installed_config(tmp_path / "etc")
    return subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, check=False, timeout=120
    )


def test_the_cron_job_prints_nothing_on_success_and_its_summary_when_it_fails(
    week_sim: dict[str, str], tmp_path: Path
) -> None:
    done = run_cron_job(api_only(week_sim), tmp_path)

    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"" and done.stderr == b"", "cron would mail this"
    assert len(nights_in(tmp_path / "state" / "out")) == 7

    # The same job on another machine, with the API gone: cron mails why, with the exit code.
    gone = {**api_only(week_sim), "CATAPULT_BASE_URL": "http://127.0.0.1:9"}
    failed = run_cron_job(gone, tmp_path / "elsewhere")

    said = failed.stderr.decode()
    assert failed.returncode == exits.UNAVAILABLE, said
    assert failed.stdout == b""
    assert "error:" in said and f"exit {exits.UNAVAILABLE}" in said, said
    assert SIM_SECRET not in said


# -- Kubernetes -------------------------------------------------------------------------------


def cronjob() -> tuple[dict[str, Any], dict[str, Any]]:
    """The CronJob and the PersistentVolumeClaim of deploy/kubernetes/cronjob.yaml."""
    documents = {d["kind"]: d for d in yaml.safe_load_all(CRONJOB.read_text())}
    return documents["CronJob"], documents["PersistentVolumeClaim"]


@pytest.mark.parametrize("version", ["1.29.0", None])  # the oldest it serves, and the newest
def test_kubernetes_validate_accepts_the_cronjob_strictly(version: str | None) -> None:
    validate = tool("kubernetes-validate")
    pinned = ["-k", version] if version else []
    done = subprocess.run(
        [validate, "--strict", *pinned, str(CRONJOB)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "did not validate" not in done.stdout + done.stderr


def test_the_cronjob_retries_an_outage_per_shard_and_fails_fast_what_a_person_must_mend() -> None:
    """What the API server would refuse that the schema does not say, and what each exit code
    of harvester's does to the Job."""
    job, claim = cronjob()
    spec = job["spec"]
    template = spec["jobTemplate"]["spec"]
    pod = template["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] in ("UTC", "Etc/UTC")
    assert template["completionMode"] == "Indexed" and template["backoffLimitPerIndex"] >= 3
    assert "backoffLimit" not in template, "a job-wide limit would be spent by one shard"
    assert pod["restartPolicy"] == "Never", "podFailurePolicy needs it"

    def action(code: int) -> str:
        for rule in template["podFailurePolicy"]["rules"]:
            exits_ = rule.get("onExitCodes")
            if exits_ is None:
                continue
            assert exits_["containerName"] == container["name"]
            assert 0 not in exits_["values"] and exits_["operator"] == "In"
            if code in exits_["values"]:
                return str(rule["action"])
        return "Count"  # the default: this index again, counted

    assert action(exits.USAGE) == action(exits.FATAL_API) == "FailJob"
    assert action(exits.FAILURES) == "FailIndex", "one shard's failed calls stop no other"
    assert action(exits.OUTPUT) == "FailIndex", "one shard's file stops no other"
    assert action(exits.UNAVAILABLE) == "Count", "an outage is retried on its own index"
    assert action(exits.SIGTERM) == "Count" and action(exits.RUNNING) == "Count"
    disruption = [
        rule
        for rule in template["podFailurePolicy"]["rules"]
        if {"type": "DisruptionTarget", "status": "True"} in rule.get("onPodConditions", [])
    ]
    assert [rule["action"] for rule in disruption] == ["Ignore"]

    args = container["args"]
    flags = {arg.split("=")[0] for arg in args}
    assert {"--nights", "--summary", "--metrics-file", "--shard"} <= flags
    assert "--no-progress" not in flags and "--quiet" not in flags, "kubectl logs shows life"
    log_every = next(float(a.split("=")[1]) for a in args if a.startswith("--log-every="))
    assert log_every <= 60
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for arg in args:
        if arg.startswith(("--output=", "--summary=", "--metrics-file=", "--calls-output=")):
            path = arg.split("=", 1)[1]
            assert path.startswith("/data/") and "{shard}" in path, arg
    volume = next(v for v in pod["volumes"] if v["name"] == mounts["/data"])
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "four pods on any nodes write it"
    assert "ReadWriteMany" in (ROOT / "docs" / "scheduling.md").read_text()


def test_the_cronjobs_shards_together_harvest_every_night_once(
    week_sim: dict[str, str], tmp_path: Path
) -> None:
    """The container's command and args as the Job runs them, one process an index, /data in
    tmp_path: together they write what one unsharded run writes, no line twice."""
    job, _ = cronjob()
    template = job["spec"]["jobTemplate"]["spec"]
    (container,) = template["template"]["spec"]["containers"]
    assert container["command"] == ["harvester"]
    environment = {**api_only(week_sim)}
    for variable in container["env"]:
        if "secretKeyRef" in variable["valueFrom"]:
            key = variable["valueFrom"]["secretKeyRef"]["key"]
            environment[variable["name"]] = {
                "user-id": SIM_USER_ID,
                "token": SIM_TOKEN,
                "secret": SIM_SECRET,
            }[key]
    data = tmp_path / "data"
    for index in range(template["completions"]):
        args = [
            arg.replace("$(SHARD_INDEX)", str(index)).replace("/data/", f"{data}/")
            for arg in container["args"]
        ]
        done = subprocess.run(
            [harvester_command(), *args],
            env=environment,
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert b"progress" not in done.stderr or b"harvester: progress:" in done.stderr

    whole = tmp_path / "whole"
    single = subprocess.run(
        [
            harvester_command(),
            *("run", "--nights", "7", "--no-progress"),
            *("--output", f"{whole}/events-{{date}}.ndjson.gz"),
        ],
        env=environment,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert single.returncode == 0, single.stderr.decode()
    sharded = events_of(data / "out")
    assert len(set(sharded)) == len(sharded), "no event twice"
    assert sorted(sharded) == sorted(events_of(whole)), "no gap, no overlap"

    for index in range(template["completions"]):
        metrics = metrics_of((data / "metrics" / f"harvester-{index}.prom").read_text())
        shard = (("shard", f"{index}/{template['completions']}"),)
        assert metrics[("harvester_last_exit_code", shard)] == 0
        summary = orjson.loads((data / f"summary-{index}.json").read_bytes())
        assert summary["shard"] == f"{index}/{template['completions']}"


# -- Prometheus -------------------------------------------------------------------------------


def test_promtool_accepts_the_alert_rules_and_their_tests_pass() -> None:
    promtool = tool("promtool")
    for command in (["check", "rules", ALERTS.name], ["test", "rules", ALERTS_TEST.name]):
        done = subprocess.run(
            [promtool, *command], cwd=ALERTS.parent, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def test_the_alerts_name_the_alerts_the_issue_asks_for_on_metrics_harvester_writes(
    week_sim: dict[str, str], tmp_path: Path
) -> None:
    rules = {
        rule["alert"]: rule["expr"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }
    assert "harvester_nights_behind > 0" in rules["HarvesterNightsBehind"]
    assert "harvester_last_exit_code" in rules["HarvesterLastRunFailed"]
    assert "harvester_last_success_timestamp_seconds" in rules["HarvesterNoRecentSuccess"]
    assert "node_textfile_mtime_seconds" in rules["HarvesterMetricsStale"]

    metrics = tmp_path / "harvester.prom"
    done = harvest(
        week_sim,
        "--nights",
        "2",
        "--metrics-file",
        str(metrics),
        "--output",
        f"{tmp_path}/events-{{date}}.ndjson",
    )
    assert done.returncode == 0, done.stderr.decode()
    written = {name for name, _ in metrics_of(metrics.read_text())}
    used = set(re.findall(r"harvester_[a-z_]+", "\n".join(rules.values())))
    assert used <= written, f"alerts on metrics harvester never writes: {used - written}"


def credentials() -> dict[str, str]:
    return {
        "CATAPULT_USER_ID": SIM_USER_ID,
        "CATAPULT_API_TOKEN": SIM_TOKEN,
        "CATAPULT_API_SECRET": SIM_SECRET,
    }


def harvest(week_sim: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    """``harvester run --no-progress ARGS`` as installed, against the week's simulator."""
    return subprocess.run(
        [harvester_command(), "run", "--no-progress", *args],
        env={**api_only(week_sim), **credentials()},
        capture_output=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("shard", [None, "1/4"])
def test_promtool_finds_nothing_to_say_of_a_real_runs_metrics(
    week_sim: dict[str, str], tmp_path: Path, shard: str | None
) -> None:
    promtool = tool("promtool")
    metrics = tmp_path / "harvester.prom"
    output = f"{tmp_path}/events-{{date}}{'-{shard}' if shard else ''}.ndjson"
    sharded = ("--shard", shard) if shard else ()
    done = harvest(
        week_sim, "--nights", "1", "--metrics-file", str(metrics), "--output", output, *sharded
    )
    assert done.returncode == 0, done.stderr.decode()

    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=metrics.read_text(),
        capture_output=True,
        text=True,
        check=False,
    )

    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stdout
    samples = metrics_of(metrics.read_text())
    own = (("shard", shard),) if shard else ()
    assert samples[("harvester_build_info", tuple(sorted((*own, ("version", __version__)))))] == 1
    assert samples[("harvester_last_exit_code", own)] == 0
    assert samples[("harvester_nights_behind", own)] == 0
    assert samples[("harvester_last_success_timestamp_seconds", own)] > 1.7e9


def test_a_refused_run_sets_the_last_exit_code_so_that_the_alert_fires(
    week_sim: dict[str, str], tmp_path: Path
) -> None:
    """A run refused before it opened its job (exit 2, 4) writes its exit code into the metrics
    file, the rest as the last run left it; a new file gets the series always there."""
    promtool = tool("promtool")
    metrics = tmp_path / "harvester.prom"
    output = f"{tmp_path}/events-{{date}}.ndjson"

    def run(*args: str) -> int:
        return harvest(week_sim, "--metrics-file", str(metrics), *args).returncode

    assert run("--nights", "1", "--output", output) == 0
    before = metrics_of(metrics.read_text())
    # Another job: another --tz, whose last night has the same date as UTC's now (so the same
    # file): Berlin's from midnight UTC to noon, New York's from noon to midnight.
    other = "Europe/Berlin" if datetime.now(UTC).hour < 12 else "America/New_York"
    assert run("--nights", "1", "--output", output, "--tz", other) == 2
    after = metrics_of(metrics.read_text())
    assert after[("harvester_last_exit_code", ())] == 2
    assert {k: v for k, v in after.items() if k[0] != "harvester_last_exit_code"} == {
        k: v for k, v in before.items() if k[0] != "harvester_last_exit_code"
    }, "the rest as the last run left it"

    checked = subprocess.run(
        [promtool, "check", "metrics"], input=metrics.read_text(), capture_output=True, text=True
    )
    assert checked.returncode == 0 and checked.stdout + checked.stderr == ""

    # Nothing but a metrics file of ours is rewritten: not a file the refusal is about.
    metrics.unlink()
    assert run("--nights", "1", "--output", output, "--tz", other) == 2
    assert not metrics.exists(), "no file made by a refused run (HarvesterMetricsMissing)"
    night = next(Path(tmp_path).glob("events-*.ndjson"))
    kept = night.read_bytes()
    for clash in (str(night), "/dev/null"):
        done = harvest(
            week_sim, "--since", "2026-01-01", "--output", str(night), "--metrics-file", clash
        )
        assert done.returncode == 2, done.stderr
    assert night.read_bytes() == kept and Path("/dev/null").is_char_device()


# -- the README's commands, as written ---------------------------------------------------------


def readme_block(section: str) -> list[str]:
    """The commands of the first ``sh`` block under the README's ``section``, comments off."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(section) :].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def as_written(line: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """One line of the README, run by bash in ``folder`` (a clone), harvester as installed."""
    line = re.sub(r"^(\.venv/bin/)?harvester ", shlex.quote(harvester_command()) + " ", line)
    return subprocess.run(
        ["bash", "-c", line], cwd=folder, env=env, capture_output=True, check=False, timeout=120
    )


def test_the_readmes_first_run_works_as_written(week_sim: dict[str, str], tmp_path: Path) -> None:
    """A first real run as the README gives it: the credentials exported (the simulator's), the
    check, the dry run (nothing written), the run; and run again, nothing written twice."""
    lines = readme_block("## A first real run")
    assert lines[0].startswith("python3 -m venv") and lines[1].startswith("export ")
    (tmp_path / "calls.txt").write_text(Path(week_sim["IDS_FILE"]).read_text())
    environment = {**api_only(week_sim), **credentials()}
    check, dry, run = lines[3:]
    done = as_written(check, tmp_path, environment)
    assert done.returncode == 0, done.stderr
    done = as_written(dry, tmp_path, environment)
    assert done.returncode == 0 and not (tmp_path / "out").exists(), done.stderr
    done = as_written(run, tmp_path, environment)
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((tmp_path / "out/summary.json").read_bytes())
    calls = len(Path(week_sim["IDS_FILE"]).read_text().split())
    assert (summary["ok"], summary["failed"]) == (calls, 0)
    events = (tmp_path / "out/events.ndjson").read_bytes()
    again = as_written(run, tmp_path, environment)
    assert again.returncode == 0 and (tmp_path / "out/events.ndjson").read_bytes() == events


def test_the_readmes_nightly_job_works_as_written(week_sim: dict[str, str], tmp_path: Path) -> None:
    """The README's "Every night": config.example.toml copied, its user id and credentials set,
    the run: seven nights, each its own file, every call once; the next run adds nothing; the
    status, from the same config, a line a night (and the run's remedy, from it too)."""
    copy, run, status = readme_block("## Every night")
    shutil.copy(ROOT / "config.example.toml", tmp_path)
    environment = api_only(week_sim)
    assert as_written(copy, tmp_path, environment).returncode == 0
    config = tmp_path / "harvester.toml"
    assert config.stat().st_mode & 0o077 == 0, "chmod 600, as the README says"
    config.write_text(installed_config(tmp_path / "filled").read_text())

    done = as_written(run, tmp_path, environment)
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((tmp_path / "out/summary.json").read_bytes())
    assert summary["nights"] == 7 and summary["failed"] == 0
    lines = events_of(tmp_path / "out")
    assert len(nights_in(tmp_path / "out")) == 7 and len(lines) == len(set(lines)) > 0
    assert as_written(run, tmp_path, environment).returncode == 0
    assert events_of(tmp_path / "out") == lines

    said = as_written(status, tmp_path, environment)
    nights = said.stdout.decode().splitlines()
    assert said.returncode == 0 and len(nights) == 7, said.stderr
    assert all(" completed: " in night for night in nights), nights
    fewer = as_written(status + " --nights 2", tmp_path, environment).stdout.decode()
    assert fewer.splitlines() == nights[-2:], "a flag over the config's"
    retry = as_written(run.replace(" run ", " retry-failed "), tmp_path, environment)
    assert retry.returncode == 0 and events_of(tmp_path / "out") == lines, retry.stderr

    config.write_text(config.read_text().replace("nights = 7", 'nights = "7"'))
    refused = as_written(status, tmp_path, environment)
    assert refused.returncode == 2 and b"nights in config file" in refused.stderr

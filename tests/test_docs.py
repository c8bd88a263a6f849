"""The docs say what the code does, and a reader finds it: a short README pointing at a page of
docs/ per question; every flag of every command, and every key of config.example.toml, in
docs/ (the configuration page's table agreeing with the code on each setting's flag, variable
and default); every failure code explained; every relative link leading somewhere."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from harvester.cli.parser import parser
from harvester.credentials import Secret
from harvester.errors import FailureCode
from harvester.settings.config import CONFIG_KEYS, Settings
from harvester.settings.options import GROUPS, flag_of
from harvester.settings.sources import environment_names
from harvester.settings.values import FailureLimit

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README = ROOT / "README.md"
CONFIGURATION = DOCS / "configuration.md"
NONE = "—"  # a table's cell for "no such thing"


def markdown_files() -> list[Path]:
    """Every Markdown file of the repository that a reader may open (not the tools' caches)."""
    skip = {".venv", "build", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "demo-out"}
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not skip & set(path.relative_to(ROOT).parts) and "egg-info" not in str(path)
    )


def all_docs() -> str:
    return "\n".join(page.read_text() for page in PAGES)


# -- the README and the pages --------------------------------------------------------------------


def test_the_readme_is_short_and_links_every_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "README.md: at most 200 lines; the rest goes to docs/"
    for page in PAGES:
        title, question = page_opening(page)
        row = f"| [{title}](docs/{page.name}) | {question} |"
        assert row in text, f"README.md's reference table has no row {row!r}"
    for section in ("## Try it", "## A first real run", "## Every night", "## Exit codes"):
        assert section in text, f"README.md has no {section!r}"


def page_opening(page: Path) -> tuple[str, str]:
    """A page's title, and the question it opens with (its first paragraph, in bold)."""
    lines = [line for line in page.read_text().splitlines() if line.strip()]
    question = []
    for line in lines[1:]:
        question.append(line)
        if line.endswith("**"):
            break
    return lines[0].removeprefix("# "), " ".join(question).strip("*")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_each_page_starts_with_the_question_it_answers(page: Path) -> None:
    first = page.read_text().splitlines()
    assert first[0].startswith("# "), f"{page.name} starts with its title"
    assert first[2].startswith("**"), f"{page.name}: its question, in bold, after the title"
    _, question = page_opening(page)
    assert question.endswith("?") and "**" not in question, (
        f"{page.name}: the first paragraph after the title is the question it answers; "
        f"found {question[:120]!r}"
    )


# -- links ---------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def anchors(markdown: Path) -> set[str]:
    """The anchors GitHub makes of a Markdown file's headings."""
    made: set[str] = set()
    in_code = False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().replace("`", "")
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link: its text
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in made:
            n += 1
            anchor = f"{slug}-{n}"
        made.add(anchor)
    return made


def relative_links(markdown: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(), flags=re.DOTALL)  # not code's
    return [
        target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)
    ]  # http:, https:, mailto:


def test_every_relative_link_leads_somewhere() -> None:
    broken = []
    checked = 0
    for markdown in markdown_files():
        for target in relative_links(markdown):
            checked += 1
            path, _, anchor = target.partition("#")
            destination = (markdown.parent / path).resolve() if path else markdown
            where = f"{markdown.relative_to(ROOT)}: ({target})"
            if not destination.exists():
                broken.append(f"{where}: no {path}")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{where}: no heading #{anchor} in {destination.name}")
    assert checked > 50, "the links were found"
    assert broken == []


def test_the_anchors_are_made_as_github_makes_them() -> None:
    page = DOCS / "resume.md"
    assert "where-a-job-stands-harvester-status" in anchors(page)
    assert "signals" in anchors(page)


# -- flags, settings, codes ----------------------------------------------------------------------


def commands() -> dict[str, argparse.ArgumentParser]:
    top, subcommands = parser()
    return {"": top, **subcommands.choices}


def test_every_flag_of_every_command_is_in_the_docs() -> None:
    text = all_docs()
    missing = [
        f"harvester {name} {flag}".replace("  ", " ")
        for name, command in commands().items()
        for action in command._actions
        for flag in action.option_strings
        if f"`{flag}`" not in text
    ]
    assert missing == [], "flags no page of docs/ names (in backticks)"


def setting_rows() -> dict[str, list[str]]:
    """The configuration page's rows of settings, by key: the cells after the key."""
    rows = {}
    for line in CONFIGURATION.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"`[a-z_]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_every_key_of_the_example_config_is_on_the_configuration_page() -> None:
    example = (ROOT / "config.example.toml").read_text()
    keys = set(re.findall(r"^#? ?([a-z_]+) = ", example, flags=re.M))
    assert {"concurrency", "rate", "nights", "metrics_file"} <= keys, "the keys were found"
    assert keys - setting_rows().keys() == set()


def default_of(key: str) -> Any:
    value = getattr(Settings(), key)
    return value.reveal() if isinstance(value, Secret) else value


def test_the_configuration_table_says_each_settings_flag_variable_and_default() -> None:
    rows = setting_rows()
    assert set(CONFIG_KEYS) == rows.keys(), "a row for every setting, and no other"
    variables = {key: variable for variable, key in environment_names().items()}
    wrong = []
    for key, (flags, variable, default, _commands, _what) in rows.items():
        flag = flag_of(key)
        said_flag = re.findall(r"`([^`]+)`", flags)
        if (said_flag[:1] or [NONE]) != ([flag] if flag != key else [NONE]):
            wrong.append(f"{key}: flag {flags}, not {flag}")
        if variable != f"`{variables[key]}`":
            wrong.append(f"{key}: variable {variable}, not {variables[key]}")
        expected = default_of(key)
        if default == NONE:
            said: Any = None
        else:
            said = tomllib.loads(f"v = {default.strip('`')}")["v"]
            if isinstance(expected, FailureLimit):
                said = FailureLimit.parse(said)
        if said != expected or type(said) is bool is not type(expected):
            wrong.append(f"{key}: default {default}, not {expected!r}")
    assert wrong == []


def test_the_configuration_page_groups_the_settings_as_help_does() -> None:
    """Each setting under the heading of its flag's group in ``--help``."""
    titles = {option.flags[0]: title for title, group in GROUPS.items() for option in group}
    heading, placed = "", {}
    for line in CONFIGURATION.read_text().splitlines():
        if line.startswith("### "):
            heading = line.removeprefix("### ").lower()
        elif re.match(r"\| `[a-z_]+` \|", line):
            placed[line.split("`")[1]] = heading
    elsewhere = {
        key: (heading, titles[flag_of(key)])
        for key, heading in placed.items()
        if flag_of(key) in titles and titles[flag_of(key)].lower() != heading
    }
    assert len(placed) == len(CONFIG_KEYS) and elsewhere == {}


def test_every_failure_code_is_explained() -> None:
    page = (DOCS / "failures.md").read_text()
    missing = [code.value for code in FailureCode if f"`{code.value}`" not in page]
    assert missing == [], "failure codes docs/failures.md does not explain"


def test_the_readmes_exit_code_table_has_every_code() -> None:
    from harvester import exits

    text = README.read_text()
    table = re.findall(r"^\| ([\d /]+) \|", text, flags=re.M)
    said = {int(code) for row in table for code in row.split("/")}
    codes = {value for name, value in vars(exits).items() if name.isupper() and type(value) is int}
    codes -= {exits.SIGNAL_BASE}
    assert codes <= said, f"exit codes the README's table leaves out: {sorted(codes - said)}"

"""The package's layout shows the flow: a subpackage a stage, and imports only go down, from
the command line to the settings and the shared vocabulary below them all; the store knows
nothing of HTTP."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "harvester"

# The floors, lowest first. The modules loose in the package are the vocabulary every stage
# shares (errors, exit codes, the clock, ids, the log, the run's counters); the library's
# entry (api) stands on top, with the command line.
FLOORS = ("settings", "fetch", "sim", "input", "store", "run", "report", "cli", "api", "__main__")


def floor_of(module: str) -> int:
    """The floor of ``harvester.X...``: -1 for the shared vocabulary."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "harvester":
        raise ValueError(module)
    return FLOORS.index(parts[1]) if parts[1] in FLOORS else -1


def stage_of(module: str) -> str:
    """The stage (subpackage) of a module; ``harvester`` for the shared vocabulary."""
    part = module.split(".")[1]
    return part if part in FLOORS else "harvester"


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        dotted = ".".join(("harvester", *path.relative_to(PACKAGE).with_suffix("").parts))
        found.append((dotted.removesuffix(".__init__"), path))
    return found


def imports_of(path: Path) -> list[str]:
    """The harvester modules ``path`` imports when it is loaded (not those a function imports
    when it runs: the package's lazy ``harvest``)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harvester"):
            if node.module == "harvester":
                names += [f"harvester.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("harvester")]
    return [name for name in names if name != "harvester.__version__"]


def test_every_stage_is_a_subpackage_that_says_what_it_does() -> None:
    for stage in FLOORS[:-2]:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), stage
        assert ast.get_docstring(ast.parse(init.read_text())), f"{stage} says what it does"


def test_imports_only_go_down() -> None:
    upward = []
    for module, path in modules():
        for imported in imports_of(path):
            if imported == module or stage_of(imported) == stage_of(module):
                continue
            if floor_of(imported) >= floor_of(module):
                upward.append(f"{module} -> {imported}")
    assert upward == [], "imports that do not go down"


@pytest.mark.parametrize(
    "stage", ["harvester.store", "harvester.settings", "harvester.input.source"]
)
def test_what_knows_nothing_of_http_does_not_load_it(stage: str) -> None:
    load = [m for m, _ in modules() if m == stage or m.startswith(stage + ".")]
    code = "import sys\n" + "".join(f"import {m}\n" for m in load)
    code += "print('aiohttp' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", f"{stage} loads aiohttp"


def test_errors_keep_their_causes() -> None:
    """An error raised while handling another names it as its cause (``raise ... from exc``):
    never ``from None``, which would hide what a report of a bug needs."""
    hidden = []
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant):
                hidden.append(f"{module}:{node.lineno}")
    assert hidden == []

    from harvester.errors import ConfigError
    from harvester.settings.load import load_settings

    env = {"CATAPULT_API_TOKEN": "t", "CATAPULT_API_SECRET": "s", "CATAPULT_USER_ID": "u-abc"}
    with pytest.raises(ConfigError) as caught:
        load_settings({"input": "x", "output": Path("e"), "concurrency": "many"}, env)
    assert isinstance(caught.value.__cause__, ValueError)


def test_the_pool_talks_to_the_store_through_the_sink() -> None:
    pool = PACKAGE / "run" / "pool.py"
    store = [name for name in imports_of(pool) if name.startswith("harvester.store")]
    assert store == ["harvester.store.sink"]


def test_the_stages_take_only_their_own_settings() -> None:
    """The client, the retry policy, the pool and the sink each get a small value of what they
    use, built once from ``Settings``, never the whole of it."""
    import typing

    from harvester.fetch.client import CallEventsClient, ClientSettings
    from harvester.fetch.retry import Retrier, RetrySettings
    from harvester.run.pool import Pool, PoolSettings
    from harvester.store.sink import CommitSettings, Sink, open_sink

    assert typing.get_type_hints(CallEventsClient.__init__)["settings"] is ClientSettings
    assert typing.get_type_hints(Retrier.__init__)["settings"] is RetrySettings
    assert typing.get_type_hints(Pool.__init__)["settings"] is PoolSettings
    assert typing.get_type_hints(Sink.__init__)["commit"] is CommitSettings
    assert typing.get_type_hints(open_sink)["commit"] is CommitSettings
    store = [name for _, path in modules() if "/store/" in str(path) for name in imports_of(path)]
    assert "harvester.settings.config" not in store, "the store sees no Settings"


def test_no_module_is_longer_than_one_job() -> None:
    """A module holds one job: 400 lines at most (the simulator, a whole API in one, 600)."""
    long = []
    for module, path in modules():
        lines = len(path.read_text().splitlines())
        if lines > (600 if module.startswith("harvester.sim.") else 400):
            long.append(f"{module}: {lines} lines")
    assert long == []


def test_no_function_is_longer_than_a_screen() -> None:
    """Each function reads in one sitting: 60 lines at most."""
    long = []
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert long == []


LAYOUT_PAGE = PACKAGE.parent / "docs" / "contributing.md"
TABLE_HEADER = "| module | what it does |"


def layout_table() -> dict[str, str | None]:
    """Every module the layout table of docs/contributing.md names, as its path from the
    repository's root, with the package of the group it is named in (``harvester/settings/``;
    None under a group that is no package, such as **shared** or **top**, whose rows give whole
    paths). A bare
    name is in its group's package; a name that is not a Python file (``deploy/``) is no
    module."""
    lines = LAYOUT_PAGE.read_text().splitlines()
    assert TABLE_HEADER in lines, f"docs/contributing.md has no table headed {TABLE_HEADER!r}"
    named: dict[str, str | None] = {}
    group: str | None = None
    for line in lines[lines.index(TABLE_HEADER) + 2 :]:
        if not line.startswith("|"):
            break  # the table's end
        first = line.split("|")[1].strip()
        names = re.findall(r"`([^`]+)`", first)
        if first.startswith("**"):
            group = names[0] if names and names[0].endswith("/") else None
            continue
        for name in names:
            if name.endswith(".py"):
                named[name if "/" in name or group is None else group + name] = group
    return named


def test_the_layout_table_names_every_module() -> None:
    """Every module (``__init__`` and ``__main__`` aside) is named in the layout table of
    docs/contributing.md, in the group of its package where the table has one, and the table
    names no module that is not there."""
    root = PACKAGE.parent
    named = layout_table()
    groups = {group for group in named.values() if group is not None}
    existing = {
        path.relative_to(root).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"}
    }
    missing = sorted(existing - named.keys())
    stale = sorted(named.keys() - existing)
    misplaced = []
    for module in sorted(existing & named.keys()):
        package = module.rsplit("/", 1)[0] + "/"
        if package in groups and named[module] != package:
            misplaced.append(f"{module} (under {named[module] or 'a group of whole paths'})")
    assert (missing, stale, misplaced) == ([], [], []), (
        f"docs/contributing.md's layout table: missing {missing}; names what is not there {stale}; "
        f"names outside its package's group {misplaced}"
    )

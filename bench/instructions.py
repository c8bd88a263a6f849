"""Instructions per call, this tree against a git revision: a figure that does not drift with the
machine's load (``bench/run.py``'s seconds do, by a third from one run to the next here).

    python bench/instructions.py [REVISION] [SMALL] [LARGE]

Runs ``bench/harvester_run.py`` under ``valgrind --tool=callgrind`` (the client only; the
simulator runs on its own, open world) on SMALL and on LARGE calls, for this tree and for
REVISION (default HEAD, checked out in a temporary worktree), and prints the difference per
call: start-up and imports cancel out. Needs valgrind; takes about a minute per 1,000 calls.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from simproc import COMMITS_BY_COUNT, running_simulator, write_ids

from harvester.sim.server import SIM_USER_ID

HERE = Path(__file__).parent
ROOT = HERE.parent


def instructions(root: Path, calls: int, env: dict[str, str], work: Path) -> int:
    """Instructions the client executed for ``calls`` calls, with the code of ``root``."""
    ids = write_ids(work / f"ids-{calls}.txt", calls)
    command = [sys.executable, str(root / "bench" / "harvester_run.py")]
    command += [env["CATAPULT_BASE_URL"], SIM_USER_ID, str(ids), str(work / "out.ndjson"), "16"]
    return callgrind_total(command, {**env, "PYTHONPATH": str(root)}, work)


def callgrind_total(command: list[str], env: dict[str, str], work: Path) -> int:
    """Instructions ``command`` executed under ``valgrind --tool=callgrind``."""
    profile = work / "callgrind.out"
    env = {**env, **COMMITS_BY_COUNT}
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", *command],
        env=env,
        capture_output=True,
        check=True,
    )
    found = re.search(r"^(?:summary|totals): (\d+)", profile.read_text(errors="replace"), re.M)
    assert found is not None, "callgrind wrote no total"
    return int(found.group(1))


def main() -> None:
    revision = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
    small = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    large = int(sys.argv[3]) if len(sys.argv) > 3 else 2500
    with tempfile.TemporaryDirectory() as folder, running_simulator("--open-world") as env:
        work = Path(folder)
        other = work / "other"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), revision],
            capture_output=True,
            check=True,
        )
        try:
            per_call = {}
            for name, root in ((revision, other), ("this tree", ROOT)):
                a, b = (instructions(root, n, env, work) for n in (small, large))
                per_call[name] = (b - a) / (large - small)
                print(f"{name:<12} {per_call[name]:>10.0f} instructions per call")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                capture_output=True,
                check=False,
            )
    print(f"this tree / {revision}: {per_call['this tree'] / per_call[revision]:.3f}")


if __name__ == "__main__":
    main()

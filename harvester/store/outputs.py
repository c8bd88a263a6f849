"""The job's output files opened as its ledger vouches for them: each checked to be the file
harvester committed to, cut back to its committed size, a lost or damaged failures file rebuilt
from the ledger first.

Blocking I/O, for the journal's disk thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from harvester.errors import ConfigError
from harvester.store import failures
from harvester.store.files import EMPTY_GZIP, AppendFile, Fsync, differs, fsync_directory
from harvester.store.state import JobState

log = logging.getLogger("harvester")

# What to do when something else changed an output file, and the failures file.
RESTORE = (
    "Restore the file from a backup and run the same command again, or start over with --fresh "
    "(every call is fetched again)"
)
REBUILT = "The next run rebuilds it from the ledger (the reasons listed so far are lost)"


def open_outputs(
    paths: dict[str, Path],
    state: JobState,
    connection: sqlite3.Connection,
    folder: Path,
    fsync: Fsync = os.fsync,
) -> dict[str, AppendFile]:
    """Each output file opened for appending after its committed size (a lost or damaged
    failures file rebuilt from the ledger first), a new ``.gz`` one valid gzip from the start;
    ``state`` gets their sizes and tails as they now stand. ``folder`` is the state folder;
    ``fsync`` makes each write durable.

    Raises ``ConfigError`` for an output file that is not the one the ledger vouches for: one
    shorter, ending in other bytes, or, after a run that ended cleanly (or saw the file changed
    under it, ``state.changed``), holding bytes past its committed size, which no crash of
    harvester left there. Once the file is as committed again, the job goes on."""
    sizes, tails = state.sizes, state.tails
    seen, state.changed = state.changed, None  # what a run saw something else do to its files
    exact = bool(seen) or state.clean
    failures_path = paths["failures"]
    changed = differs(failures_path, sizes["failures"], tails.get("failures"), exact=exact)
    if changed:
        log.warning(
            "%s: %s; rebuilt it from the ledger, one line per failed call (their reasons are "
            "lost; retry-failed takes them on)",
            failures_path,
            changed,
        )
        lines = failures.ledger_lines(connection)
        failures.swap(connection, state, failures_path, lines, fsync=fsync)
    for name, path in paths.items():
        changed = differs(path, sizes[name], tails.get(name), exact=exact)
        if name != "failures" and changed:
            said = f" (a run saw: {seen})" if seen else ""
            raise ConfigError(
                f"{path}: {changed}: it is not what harvester committed to it{said}. {RESTORE}"
            )
    files: dict[str, AppendFile] = {}
    try:
        for name, path in paths.items():
            remedy = REBUILT if name == "failures" else RESTORE
            files[name] = file = AppendFile.open(path, sizes[name], remedy, fsync)
            if path.suffix == ".gz" and file.size == 0:
                sizes[name] = file.append(EMPTY_GZIP, compress=False)
            tails[name] = file.checksum
        # New files survive a power loss only once their folder's entries are on disk too.
        for each in {*(path.parent for path in paths.values()), folder}:
            fsync_directory(each, fsync)
    except BaseException:
        for file in files.values():
            file.close()
        raise
    return files

"""Files, written so that neither a reader nor a crash ever meets a part of one.

- The journal's files (blocking, for its disk thread): appends that are on disk when they
  return, files cut back to their committed size, folder entries made durable, and the checks,
  before anything is written, that no two flags name one file and that every file can be made.
- Files off the event loop, through aiofiles: a thread for reads that may never return (a FIFO,
  a stdin), and files that readers must only ever see whole (the summary, the metrics file).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shlex
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn, ParamSpec, TypeVar

import aiofiles
import aiofiles.os
import aiofiles.tempfile

from harvester.errors import ConfigError, OutputChanged, OutputError
from harvester.store.ledger import state_dir

P = ParamSpec("P")
T = TypeVar("T")

# What makes a file's data (or a folder's entries) durable: ``os.fsync``, or a stand-in given to
# the store (a test's disk that fills up).
Fsync = Callable[[int], None]

# An empty gzip file that gzip -t and zcat accept: an empty member, not zero bytes.
EMPTY_GZIP = gzip.compress(b"", mtime=0)
# What reading a damaged (truncated, corrupt) file raises.
DAMAGED = (OSError, EOFError, zlib.error)

# -- the journal's files ---------------------------------------------------------------------


def check_files(files: dict[str, Path]) -> None:
    """Refuse, before anything is written, files the run cannot keep apart.

    ``files`` maps each flag to its path (``--output`` among them). Two flags naming one file
    (however spelled: relative, through a symlink, a hard link), a folder where a file belongs,
    and a file inside the output's state folder are all ``ConfigError``s.
    """
    state = state_dir(files["--output"])
    seen: dict[object, str] = {}
    for flag, path in files.items():
        if str(path) in ("", "."):
            raise ConfigError(f"{flag} is empty: give a file path")
        real = path.resolve()
        if real.is_dir():
            raise ConfigError(f"{flag} {path} is a folder: give a file path, such as {path}/x")
        if flag != "--input" and real.exists() and not real.is_file():
            raise ConfigError(
                f"{flag} {path} is not a regular file (a device, a FIFO, a socket): harvester "
                "writes it by replacing it or cutting it back, so it must be a file of its own"
            )
        if real == state or state in real.parents:
            raise ConfigError(f"{flag} {path} is inside {state}, which holds harvester's state")
        names: list[object] = [real]
        with contextlib.suppress(OSError):
            info = real.stat()
            names.append((info.st_dev, info.st_ino))
        for name in names:
            other = seen.setdefault(name, flag)
            if other != flag:
                raise ConfigError(
                    f"{other} and {flag} name the same file ({path}): writing one would destroy "
                    "the other. Give each a file of its own"
                )


def check_writable(flag: str, path: Path) -> None:
    """Refuse, before the first request, a file that could not be written at the end: its
    folder (or the nearest one that exists, where it would be made) must take a new file."""
    folder = path.resolve().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{flag} {path}: {folder} is not a folder, so nothing can be made in it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".harvester-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{flag} {path} cannot be written ({folder}: {exc.strerror}): fix the permissions or "
            "choose another path; nothing was fetched"
        ) from exc


def check_no_data(paths: Iterable[Path]) -> None:
    """Refuse files that hold data no ledger vouches for: starting over would cut them."""
    for path in paths:
        if path.exists() and path.stat().st_size > 0:
            raise ConfigError(
                f"{path} exists but holds no harvester state, so resuming into it could double "
                "or lose events. Use --fresh to replace it, or choose another --output"
            )


def fsync_directory(folder: Path, fsync: Fsync = os.fsync) -> None:
    """Make the entries of ``folder`` (files created or renamed in it) durable."""
    try:
        _sync_folder(folder, fsync)
    except OSError as exc:
        raise OutputError(f"cannot sync {folder}: {exc.strerror}") from exc


def _sync_folder(folder: Path, fsync: Fsync) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def differs(path: Path, size: int, checksum: int | None, *, exact: bool = False) -> str | None:
    """Why ``path`` is not the file whose first ``size`` bytes the ledger vouches for (shorter,
    missing, or ending them in other bytes than ``checksum`` says), or None when it is. With
    ``exact``, bytes past ``size`` are a difference too: no crash of harvester left them."""
    try:
        with path.open("rb") as file:
            actual = os.fstat(file.fileno()).st_size
            if actual < size:
                return f"it is shorter ({actual} bytes) than its ledger says ({size})"
            if checksum is not None and tail_checksum(file.fileno(), size) != checksum:
                return (
                    "its committed part does not end in the bytes harvester wrote (another file "
                    "was put in its place, or something else wrote into it)"
                )
            if exact and actual > size:
                return (
                    f"it holds {actual - size} bytes past the {size} harvester committed, which "
                    "are not harvester's (no run of it was cut short there): something else "
                    "wrote them. Keep them elsewhere and cut the file back (truncate -s "
                    f"{size} {shlex.quote(str(path))})"
                )
    except FileNotFoundError:
        return "it is missing" if size > 0 else None
    except OSError as exc:
        raise OutputError(f"cannot open {path}: {exc.strerror}") from exc
    return None


def tail_checksum(fd: int, size: int) -> int:
    """The checksum the ledger keeps of a file's first ``size`` bytes: of their last ``TAIL``."""
    return zlib.crc32(_tail_of(fd, size))


# Of each output file, the ledger keeps a checksum of the last this many committed bytes:
# enough to tell the file harvester wrote from another one put in its place.
TAIL = 4096


def _tail_of(fd: int, size: int) -> bytes:
    start = max(0, size - TAIL)
    return os.pread(fd, size - start, start)


class AppendFile:
    """An output file that harvester only ever appends to, and that each append first checks is
    still the file it wrote: the same file (not removed, not replaced) of the size it committed.
    Whatever else writes, cuts or replaces it while a run goes on stops the run (``OutputError``)
    before anything more is committed. A ``.gz`` path gets a gzip member per append. Each write
    is made durable by ``fsync``."""

    def __init__(self, path: Path, fd: int, size: int, remedy: str, fsync: Fsync) -> None:
        self.path = path
        self.size = size
        self.remedy = remedy  # what to do when something else changed it
        self._fd = fd
        self._fsync = fsync
        info = os.fstat(fd)
        self._identity = (info.st_dev, info.st_ino)
        self._tail = _tail_of(fd, size)
        self._compress = path.suffix == ".gz"

    @classmethod
    def open(cls, path: Path, size: int, remedy: str, fsync: Fsync = os.fsync) -> AppendFile:
        """``path`` opened to append after its first ``size`` bytes, dropping anything past them
        (no commit vouches for it); made, with its folder, when missing. ``differs`` says
        whether the file is the one the ledger vouches for: check it first. ``remedy`` is
        what to do should something else change it; ``fsync`` makes each write durable."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            if os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)
                fsync(fd)
            return cls(path, fd, size, remedy, fsync)
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"cannot open {path}: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise

    @property
    def checksum(self) -> int:
        """``tail_checksum`` of the committed part as it stands."""
        return zlib.crc32(self._tail)

    def check(self, size: int | None = None) -> None:
        """Raise ``OutputError`` unless the file at ``path`` is still the one this writes, of
        ``size`` bytes (the size it committed, by default)."""
        expected = self.size if size is None else size
        try:
            at_path = os.stat(self.path)
            mine = os.fstat(self._fd)
        except FileNotFoundError:
            self._changed("was removed")
        except OSError as exc:
            raise OutputError(f"cannot look at {self.path}: {exc.strerror}") from exc
        if (at_path.st_dev, at_path.st_ino) != self._identity:
            self._changed("was replaced by another file")
        if mine.st_size < expected:
            self._changed(f"was cut to {mine.st_size} bytes (harvester had {expected} in it)")
        if mine.st_size > expected:
            self._changed(f"grew by {mine.st_size - expected} bytes that harvester did not write")
        # The committed tail, even after an append: a write into it between the check before
        # the append and the append itself is caught here, not missed once the file moved on.
        if self._tail and _tail_of(self._fd, self.size) != self._tail:
            self._changed("was written into (its last committed bytes are not those written)")

    def append(self, data: bytes | bytearray, *, compress: bool = True) -> int:
        """Append ``data`` durably, as a gzip member of its own for a ``.gz`` path; the new
        size. The file is checked (``check``) before and after."""
        self.check()
        if not data:
            return self.size
        if compress and self._compress:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._fsync(self._fd)
        except OSError as exc:
            raise OutputError(
                f"cannot write {self.path}: {exc.strerror}. Nothing past the last commit counts; "
                "free some space or fix the permissions, then run the same command again"
            ) from exc
        self.check(self.size + len(data))
        self.size += len(data)
        self._tail = (self._tail + data[-TAIL:])[-TAIL:]
        return self.size

    def close(self) -> None:
        os.close(self._fd)

    def _changed(self, what: str) -> NoReturn:
        raise OutputChanged(
            what,
            f"{self.path} {what} while harvester was writing it (it had committed {self.size} "
            "bytes to it): something else changed it, and what was committed may be gone. The "
            f"run stops here and commits nothing more. {self.remedy}",
        )


# -- files off the event loop ----------------------------------------------------------------


async def replace_file(path: Path, data: bytes, *, fsync: Fsync = os.fsync) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the whole new one, never a
    part, and the new one is on disk when this returns.

    The data goes to a temporary file in the same folder, is fsynced (``fsync``, on a thread),
    renamed over ``path``, and the folder is fsynced so that the rename survives a crash.
    Whatever fails (or a cancellation), ``path`` is left as it was and the temporary file is
    removed.
    """
    await aiofiles.os.makedirs(path.parent, exist_ok=True)
    temporary: str | None = None
    try:
        async with aiofiles.tempfile.NamedTemporaryFile(
            "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as file:
            temporary = str(file.name)
            await _fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide it from a collector
            await file.write(data)
            await file.flush()
            await aiofiles.os.wrap(fsync)(file.fileno())
        await aiofiles.os.replace(temporary, path)
        temporary = None
        await _fsync_folder(path.parent, fsync)
    finally:
        if temporary is not None:
            await asyncio.shield(_remove_quietly(temporary))


_fchmod = aiofiles.os.wrap(os.fchmod)
_fsync_folder = aiofiles.os.wrap(_sync_folder)


async def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):  # already gone, or the folder went: nothing more to do
        await aiofiles.os.remove(path)

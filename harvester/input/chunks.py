"""A call list's bytes: opened and read off the event loop, gunzipped, cut into lines.

Every blocking call runs on a daemon thread of the reader's own, through aiofiles, so a FIFO
that waits for its writer or a stdin that never ends holds neither the event loop nor the
process's exit; the bytes are inflated and cut into lines in the event loop, a chunk at a time
(``harvester.input.source`` parses the lines into records).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import stat
import sys
import zlib
from pathlib import Path
from typing import Any

from aiofiles.threadpool import wrap
from aiofiles.threadpool.binary import AsyncFileIO

from harvester.errors import InputError
from harvester.threads import DaemonExecutor

MAX_LINE = 64 * 1024
# What a read asks for, and the most plain bytes handed out at once: what the event loop
# inflates, cuts into lines and holds as line objects in one go (about 2,000 lines, under a
# millisecond). Larger reads cost as much CPU a line and more memory (bench/input.py).
CHUNK = 64 * 1024
# A call list is known by its path, its size and a digest of this many of its first bytes.
HEAD_BYTES = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"


def is_stream(spec: str) -> bool:
    """True for ``-`` and any path that is not a regular file (a pipe, a FIFO, a device): it is
    read once, as it comes, and never opened twice."""
    if spec == "-":
        return True
    try:
        return not stat.S_ISREG(os.stat(spec).st_mode)
    except OSError:
        return False  # the reader says what is wrong with it, in its own words


class ChunkReader:
    """A call list's bytes, gunzipped when they are gzip, at most ``CHUNK`` of them at a time.

    Every blocking call (open, read, close) runs on a daemon thread of the reader's own
    (``DaemonExecutor``), reads through aiofiles: a FIFO that waits for its writer in ``open``,
    a slow pipe or a stdin that never ends may block that thread as long as they like, never
    the event loop (signals are still heard) nor the process's exit. A read returns what the
    file has, up to ``CHUNK``: a pipe's lines come on as they are written. ``close`` closes the
    file on that thread, once a read still in flight has returned.
    """

    def __init__(self, spec: str) -> None:
        self.name = "stdin" if spec == "-" else spec
        self._spec = spec
        self._executor = DaemonExecutor("harvester-input")
        self._raw: io.FileIO | None = None  # set and closed on the executor's thread only
        self._file: AsyncFileIO | None = None
        self._started = False  # gzip or not is told by the first bytes
        self._gunzip: Gunzip | None = None
        self._eof = False
        self._closed = False

    async def open(self) -> None:
        """Open the file (a FIFO: wait for its writer); ``InputError`` if it cannot be."""
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(self._executor, self._open_on_thread)
        self._file = wrap(raw, loop=loop, executor=self._executor)

    async def read(self) -> bytes:
        """The next plain bytes, at most ``CHUNK``; b"" at the end. Raises ``OSError``,
        ``EOFError`` or ``zlib.error`` for input that cannot be read or gunzipped."""
        if not self._started:
            self._started = True
            head = b""
            while len(head) < len(GZIP_MAGIC) and (more := await self._read_raw()):
                head += more
            if not head.startswith(GZIP_MAGIC):
                return head
            self._gunzip = Gunzip()
            self._gunzip.feed(head)
        if self._gunzip is None:
            return await self._read_raw()
        while not (plain := self._gunzip.inflate(CHUNK)):
            data = await self._read_raw()
            if not data:
                self._gunzip.end()
                return b""
            self._gunzip.feed(data)
        return plain

    async def identify(self) -> dict[str, Any]:
        """``identify`` of the file, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, identify, self._spec)

    def close(self) -> None:
        """Close the file: at once, or when the read in flight returns (maybe never)."""
        if not self._closed:
            self._closed = True
            self._executor.submit(self._close_on_thread)
            self._executor.shutdown(wait=False)

    async def _read_raw(self) -> bytes:
        if self._eof:
            return b""
        assert self._file is not None
        data = await self._file.read(CHUNK)
        self._eof = not data
        return data

    def _open_on_thread(self) -> io.FileIO:
        self._raw = _open_input(self._spec)
        return self._raw

    def _close_on_thread(self) -> None:
        if self._raw is not None:
            self._raw.close()


def _open_input(spec: str) -> io.FileIO:
    if spec == "-":
        if sys.stdin is None:
            raise InputError("stdin is closed: pipe the call list in, or give its path")
        # A descriptor of our own, not sys.stdin: a read that blocks holds nothing the
        # interpreter needs to close sys.stdin at exit.
        try:
            return io.FileIO(os.dup(sys.stdin.fileno()), "r")
        except (OSError, ValueError) as exc:  # said in our words: the system's reason at most
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is closed"
            raise InputError(f"cannot read stdin: {why}") from exc
    path = Path(spec)
    try:
        if path.is_dir():
            raise InputError(f"input {spec} is a directory; give a call list file")
        return io.FileIO(path, "r")
    except FileNotFoundError as exc:
        raise InputError(f"input file {spec} does not exist") from exc
    except OSError as exc:
        raise InputError(f"cannot open input file {spec}: {exc.strerror}") from exc


class Gunzip:
    """gzip members one after another, as ``gzip -d`` reads them (zero padding between them
    allowed), inflated at most ``limit`` bytes a step: a megabyte of input can hold a gigabyte.
    """

    def __init__(self) -> None:
        self._member = zlib.decompressobj(wbits=31)
        self._input = b""  # given, not yet inflated
        self._full = False  # the last step stopped at its limit: zlib may hold more output
        self._between = False  # after a member's end: padding, another member, or the end

    def feed(self, data: bytes) -> None:
        self._input = self._input + data if self._input else data

    def inflate(self, limit: int) -> bytes:
        """Up to ``limit`` plain bytes from what was fed; b"" when more input is needed."""
        while self._input or self._full:
            if self._between:
                rest = self._input.lstrip(b"\0")
                if GZIP_MAGIC.startswith(rest):  # nothing yet, or half a magic number
                    self._input = rest
                    return b""
                if not rest.startswith(GZIP_MAGIC):
                    raise zlib.error("not a gzip member after the end of the previous one")
                self._member, self._input = zlib.decompressobj(wbits=31), rest
                self._between = False
            plain = self._member.decompress(self._input, limit)
            self._full = len(plain) == limit
            if self._member.eof:
                self._input, self._between, self._full = self._member.unused_data, True, False
            else:
                self._input = self._member.unconsumed_tail
            if plain:
                return plain
        return b""

    def end(self) -> None:
        """The input is over: raise if it stopped inside a member."""
        if not self._between or self._input:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")


class Lines:
    """Whole lines from pieces of input, in order; ``taken`` counts the lines handed out.

    A piece may end inside a line, or inside a UTF-8 sequence (which no line end splits):
    the rest waits for the next piece. Text and NDJSON lines end at ``\\n`` and lose their
    end; CSV lines (``universal``) end at ``\\n``, ``\\r\\n`` or ``\\r`` and keep it, as the
    csv module wants them. A line of more than ``MAX_LINE`` bytes is kept only that far (and
    a byte): long enough to be told too long.
    """

    def __init__(self, universal: bool) -> None:
        self._universal = universal
        self._lines: list[bytes] = []
        self._at = 0
        self._rest = b""
        self.taken = 0

    @property
    def exhausted(self) -> bool:
        return self._at == len(self._lines)

    def feed(self, data: bytes) -> None:
        """Cut ``data`` into lines; only once the lines before are all taken."""
        assert self.exhausted
        self._lines = []  # free before the next are made
        if self._universal:
            lines = (self._rest + data).splitlines(keepends=True)
            # A line without its end, or one ending at \r, which a \n may still follow.
            self._rest = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        else:
            lines = data.split(b"\n")
            if self._rest:
                lines[0] = self._rest + lines[0]
            self._rest = lines.pop()
        if len(self._rest) > MAX_LINE:
            self._rest = self._rest[:MAX_LINE] + self._rest[-1:]  # its last byte may be \r
        self._lines, self._at = lines, 0

    def end(self) -> None:
        """The input is over: the last line may have had no end."""
        assert self.exhausted
        self._lines, self._at, self._rest = ([self._rest] if self._rest else []), 0, b""

    def take(self, most: int) -> list[bytes]:
        lines = self._lines[self._at : self._at + most]
        if lines and self.taken == 0:
            lines[0] = lines[0].removeprefix(BOM)
        self._at += len(lines)
        self.taken += len(lines)
        return lines


def identify(spec: str) -> dict[str, Any]:
    """What makes a call list the same one on a re-run: its path, size and first MiB.

    A stream (stdin, a pipe, a FIFO) cannot be read twice, so it is known only as a stream:
    every run reads it through, and what is done is skipped.
    """
    if is_stream(spec):
        return {"input": "-"}
    path = Path(spec).resolve()
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return {"input": str(path)}  # the reader reports the problem in its own words
    return {"input": str(path), "size": size, "head_sha256": hashlib.sha256(head).hexdigest()}


def grew_from(spec: str, before: dict[str, Any]) -> bool:
    """True when the call list at ``spec`` is the one ``before`` identified, grown at its end:
    longer now, its first bytes (those ``before`` fingerprinted) the same, and the old end a
    line's end (lines appended, not a last line changed). Bytes past the first MiB of what it
    held are not compared: the same fingerprint as any re-run's."""
    size = before.get("size")
    if is_stream(spec) or not isinstance(size, int):
        return False
    path = Path(spec).resolve()
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size <= size:
                return False
            head = f.read(min(size, HEAD_BYTES))
            f.seek(size - 1)
            ended = f.read(1) == b"\n"  # else its last line was cut short, and goes on now
    except OSError:
        return False
    return ended and hashlib.sha256(head).hexdigest() == before.get("head_sha256")


def count_records(spec: str | None) -> int | None:
    """About how many records a call list holds (its lines), for the bar; None when unknown.

    Only a regular file is counted: a stream (stdin, a pipe, a FIFO) can be read only once, and
    that once is the harvest's. The file is opened without waiting and looked at before it is
    read, so a FIFO put in its place after ``is_stream`` looked is neither waited for nor read.
    """
    if spec is None or is_stream(spec):
        return None
    path = Path(spec)
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as raw:
            if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
                return None
            stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else raw
            raw.seek(0)
            lines, last = 0, b"\n"
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
            lines += last != b"\n"  # a last line without its newline is a line too
    except (OSError, EOFError, zlib.error):
        return None
    return max(lines - (1 if path.name.lower().removesuffix(".gz").endswith(".csv") else 0), 0)

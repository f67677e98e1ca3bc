"""Blobs from a bare repository with one ``git cat-file --batch --buffer``, split while the output streams.

Reading a 50,000-file tree, ``communicate()`` collected ~21 MB of output as chunks, joined them into one
bytes object and then sliced every blob out of it: three copies of the tree at the peak (issue 18). Here
the output is read in chunks and each blob is cut out as soon as it is complete, so only the blobs and
one chunk are held. The oids are written to git's stdin concurrently (its output pipe would otherwise
fill and both sides would wait).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from ..errors import SourceError

CHUNK = 1 << 18


class BatchSplitter:
    """Cuts ``<oid> <type> <size>\\n<content>\\n`` records out of output fed in chunks, in request order."""

    def __init__(self, oids: list[str], missing: Callable[[str], SourceError]) -> None:
        self._oids = oids
        self._missing = missing
        self._next = 0
        self._rest = b""  # the start of a record not complete yet
        self.blobs: dict[str, bytes] = {}

    def feed(self, chunk: bytes) -> None:
        buf = self._rest + chunk if self._rest else chunk
        pos, end, oids, blobs = 0, len(buf), self._oids, self.blobs
        while self._next < len(oids):
            header_end = buf.find(b"\n", pos)
            if header_end < 0:
                break
            header = buf[pos:header_end].split()
            if len(header) < 3 or header[1] == b"missing":
                raise self._missing(oids[self._next])
            start = header_end + 1
            stop = start + int(header[2])
            if stop >= end:  # the content, or its closing newline, is still to come
                break
            blobs[oids[self._next]] = buf[start:stop]
            self._next += 1
            pos = stop + 1
        self._rest = buf[pos:]

    def done(self) -> bool:
        return self._next == len(self._oids)


async def cat_blobs(oids: list[str], cwd: Path, env: dict[str, str], timeout: float,
                    failed: Callable[[str], SourceError], missing: Callable[[str], SourceError]) -> dict[str, bytes]:
    """The content of each oid (deduplicated), by oid. `failed(stderr)` and `missing(oid)` make the errors,
    so the caller's messages (naming the repository, its secrets redacted) stay its own."""
    unique = list(dict.fromkeys(oids))
    if not unique:
        return {}
    try:
        proc = await asyncio.create_subprocess_exec(
            "git", "cat-file", "--batch", "--buffer", cwd=str(cwd), env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise SourceError(f"cannot run git: {exc.strerror}") from None
    try:
        return await asyncio.wait_for(_exchange(proc, unique, failed, missing), timeout)
    except TimeoutError:
        raise failed(f"timed out after {timeout:g} s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _exchange(proc: asyncio.subprocess.Process, oids: list[str], failed: Callable[[str], SourceError],
                    missing: Callable[[str], SourceError]) -> dict[str, bytes]:
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    writer = asyncio.ensure_future(_write(proc.stdin, ("\n".join(oids) + "\n").encode()))
    errors = asyncio.ensure_future(proc.stderr.read())
    splitter = BatchSplitter(oids, missing)
    try:
        while not splitter.done():
            chunk = await proc.stdout.read(CHUNK)
            if not chunk:
                break
            splitter.feed(chunk)
        await writer
        stderr = (await errors).decode("utf-8", "replace")
        await proc.wait()
    finally:
        writer.cancel()
        errors.cancel()
    if proc.returncode != 0 or not splitter.done():
        raise failed(stderr)
    return splitter.blobs


async def _write(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # git stopped reading: its exit status and stderr say why
    finally:
        stdin.close()

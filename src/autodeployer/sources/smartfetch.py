"""A push's fetch, spoken directly over Git's smart HTTP protocol (v2 ``fetch``), without `git fetch`.

`git fetch` over HTTP is a tree of processes (git, git-remote-http, index-pack; on a local clone also
`rev-list --objects` for the connectivity check) and two round trips at least. A push's sync needs one
commit whose parents the mirror mostly has: one protocol-v2 ``fetch`` POST on the kept-alive
connection the head check already uses (sources/smarthttp.py) asks for exactly that commit, says
which commit the mirror has (``have``), and receives a thin pack; ``git index-pack --stdin --fix-thin``
stores it in the bare mirror; the branch ref is then moved the way git moves it (``<ref>.lock``,
written, renamed into place), from the commit's known old value only.

Anything unexpected (not v2, an ``ERR`` line, a section or band it does not know, a ref it cannot
read or lock, index-pack failing) raises :class:`ProtocolError` and the caller runs the real `git
fetch` as before. The token travels only in the Authorization header of the shared client (never in
a URL or argv); index-pack gets the pack on stdin and no credentials at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from .smarthttp import AGENT, UPLOAD_PACK, ProtocolError, Unreachable, pkt

_SHA = re.compile(rb"[0-9a-f]{40}")
_REF = re.compile(r"refs/heads/[A-Za-z0-9._/-]+")

# A push's answer is held in memory until index-pack reads it: a larger one (a big binary pushed) is left to
# `git fetch`, which streams to disk. Typical config pushes are kilobytes.
MAX_ANSWER_BYTES = 32 * 1024 * 1024

# (args, stdin) -> (returncode, stdout, stderr): `git <args>` in the mirror, as GitSource runs it
RunGit = Callable[[tuple[str, ...], bytes], Awaitable[tuple[int, bytes, str]]]


def fetch_request(want: str, haves: list[str]) -> bytes:
    """One v2 ``fetch`` of `want` with `haves`, ``done`` at once: the answer is the pack, no negotiation."""
    args = [pkt("thin-pack\n"), pkt("no-progress\n"), pkt("ofs-delta\n"), pkt(f"want {want}\n")]
    args += [pkt(f"have {sha}\n") for sha in haves]
    return (pkt("command=fetch\n") + pkt(f"agent={AGENT}\n") + b"0001" + b"".join(args) + pkt("done\n")
            + b"0000")


def demux_pack(body: bytes) -> bytes:
    """The pack of a v2 fetch answer: after the ``packfile`` section line, band 1 carries the pack,
    band 2 progress (ignored), band 3 an error; a flush ends it."""
    pos, in_pack = 0, False
    chunks: list[bytes] = []
    while pos < len(body):
        try:
            size = int(body[pos:pos + 4], 16)
        except ValueError:
            raise ProtocolError("malformed pkt-line in the fetch answer") from None
        if size in (0, 1, 2):
            if in_pack and size == 0:
                return b"".join(chunks)
            pos += 4
            continue
        if size < 5 or pos + size > len(body):
            raise ProtocolError("truncated pkt-line in the fetch answer")
        data = body[pos + 4:pos + size]
        pos += size
        if not in_pack:
            _section_line(data)
            in_pack = data == b"packfile\n"
            continue
        band = data[0]
        if band == 1:
            chunks.append(data[1:])
        elif band == 3:
            raise ProtocolError("the server reported an error while sending the pack")
        elif band != 2:
            raise ProtocolError(f"unknown side-band {band}")
    raise ProtocolError("the fetch answer ended before its pack did")


def _section_line(data: bytes) -> None:
    """Lines before the pack: ``packfile`` starts it; an ``ERR`` or another section is a surprise."""
    if data.startswith(b"ERR "):
        raise ProtocolError("the server refused the fetch")  # e.g. "not our ref": the text may quote the URL
    if data != b"packfile\n":
        raise ProtocolError(f"unexpected section {data[:40]!r} in the fetch answer")


def idx_has(idx: Path, sha: str) -> bool:
    """Whether a pack index (version 2: magic, version, 256-entry fan-out, sorted object names) lists `sha`."""
    try:
        data = idx.read_bytes()
    except OSError:
        return False
    if data[:8] != b"\xfftOc\x00\x00\x00\x02" or len(data) < 8 + 1024:
        return False
    want = bytes.fromhex(sha)
    fanout = 8
    first = want[0]
    lo = int.from_bytes(data[fanout + 4 * (first - 1):fanout + 4 * first], "big") if first else 0
    hi = int.from_bytes(data[fanout + 4 * first:fanout + 4 * first + 4], "big")
    names = fanout + 1024
    while lo < hi:
        mid = (lo + hi) // 2
        found = data[names + 20 * mid:names + 20 * mid + 20]
        if found == want:
            return True
        if found < want:
            lo = mid + 1
        else:
            hi = mid
    return False


def read_ref(mirror: Path, ref: str) -> str | None:
    """The commit `ref` names in the bare mirror: its loose file, else packed-refs; None when absent."""
    try:
        loose = (mirror / ref).read_bytes().strip()
    except FileNotFoundError:
        loose = b""
    except OSError:
        return None
    if loose:
        return loose.decode() if _SHA.fullmatch(loose) else None
    try:
        packed = (mirror / "packed-refs").read_bytes()
    except OSError:
        return None
    for line in packed.splitlines():
        sha, _, name = line.partition(b" ")
        if name.decode("utf-8", "replace") == ref and _SHA.fullmatch(sha):
            return sha.decode()
    return None


def write_ref(mirror: Path, ref: str, new: str, old: str) -> None:
    """Move `ref` from `old` to `new` the way git does: create ``<ref>.lock`` exclusively (a git running
    in the mirror holds it), check the old value under the lock, write, rename into place."""
    path = mirror / ref
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise ProtocolError(f"cannot lock {ref}: {exc.strerror}") from None
    try:
        if read_ref(mirror, ref) != old:
            raise ProtocolError(f"{ref} moved while fetching")
        os.write(fd, f"{new}\n".encode())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(lock, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if lock.exists():
            lock.unlink()


class SmartFetch:
    """Fetches one commit of one repository into its bare mirror (see the module docstring)."""

    def __init__(self, url: str, http: httpx.AsyncClient, headers: dict[str, str], timeout: float,
                 max_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.url = url.rstrip("/")
        self.max_bytes = max_bytes
        self._http = http
        self._headers = {**headers, "Git-Protocol": "version=2", "User-Agent": AGENT,
                         "Content-Type": f"{UPLOAD_PACK}-request", "Accept": f"{UPLOAD_PACK}-result"}
        self._timeout = timeout

    async def fetch(self, mirror: Path, ref: str, want: str, run_git: RunGit) -> None:
        """`want` into the mirror and `ref` moved to it; ProtocolError: use `git fetch` instead."""
        if not _REF.fullmatch(ref) or ".." in ref:
            raise ProtocolError("only branches are fetched this way")
        have = read_ref(mirror, ref)
        if have is None:
            raise ProtocolError(f"the mirror has no {ref} yet: the first fetch is git's")
        pack = demux_pack(await self._post(fetch_request(want, [have])))
        if not pack.startswith(b"PACK"):
            raise ProtocolError("the fetch answer holds no pack")
        code, out, _ = await run_git(("index-pack", "--stdin", "--fix-thin"), pack)
        name = out.split(b"\t", 1)[-1].strip().decode("ascii", "replace")
        if code != 0 or not out.startswith((b"pack\t", b"keep\t")) or not _SHA.fullmatch(name.encode()):
            raise ProtocolError("git index-pack refused the pack")
        # The new pack's index answers "is the commit there" without one more git process.
        if not idx_has(mirror / "objects" / "pack" / f"pack-{name}.idx", want):
            raise ProtocolError("the pack did not hold the commit asked for")
        write_ref(mirror, ref, want, have)

    async def _post(self, body: bytes) -> bytes:
        """The answer, read up to `max_bytes` (ProtocolError beyond: `git fetch` streams it to disk)."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with self._http.stream("POST", f"{self.url}/git-upload-pack", content=body, headers=self._headers,
                                         timeout=self._timeout) as response:
                if response.status_code != 200:
                    raise Unreachable(f"{response.status_code} {response.reason_phrase}")
                if response.headers.get("content-type", "") != f"{UPLOAD_PACK}-result":
                    raise ProtocolError("unexpected content type for fetch")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ProtocolError(f"the pack is larger than {self.max_bytes:,} bytes: "
                                            "git fetch stores it without holding it in memory")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise Unreachable(type(exc).__name__) from None
        return b"".join(chunks)

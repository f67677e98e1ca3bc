"""The branch-head check of `git ls-remote`, spoken directly over Git's smart HTTP protocol.

An idle poll is the hot path of the service: hundreds of apps poll every few seconds. Spawning `git`
for each costs ~15 ms of CPU; one protocol-v2 `ls-refs` request on a kept-alive connection costs a
fraction of that and reads a few hundred bytes. Anything unexpected raises :class:`ProtocolError`,
and the caller falls back to the real `git ls-remote`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

import httpx

from .leanpost import LeanPool, LeanPost, Status

AGENT = "git/autodeployer"
UPLOAD_PACK = "application/x-git-upload-pack"


class ProtocolError(Exception):
    """The server did not speak the protocol as expected; use `git ls-remote` instead."""


class Unreachable(Exception):
    """The server answered with an error status or could not be reached (a source error)."""


def pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


def parse_pkt_lines(body: bytes) -> list[bytes | None]:
    """Split pkt-lines; flush (0000) and delimiter (0001) packets become None."""
    out: list[bytes | None] = []
    pos = 0
    while pos < len(body):
        try:
            size = int(body[pos : pos + 4], 16)
        except ValueError:
            raise ProtocolError("malformed pkt-line") from None
        if size in (0, 1, 2):
            out.append(None)
            pos += 4
            continue
        if size < 4 or pos + size > len(body):
            raise ProtocolError("truncated pkt-line")
        out.append(body[pos + 4 : pos + size])
        pos += size
    return out


def ls_refs_request(ref: str) -> bytes:
    """One ls-refs for `ref`; `peel` makes an annotated tag also name the commit it points to."""
    return (
        pkt("command=ls-refs\n")
        + pkt(f"agent={AGENT}\n")
        + b"0001"
        + pkt("peel\n")
        + pkt(f"ref-prefix {ref}\n")
        + b"0000"
    )


def find_ref(lines: Sequence[bytes | None], ref: str) -> str | None:
    """The commit of `ref` in an ls-refs answer or a v0 advertisement; None if absent.

    An annotated tag names a tag object, not a commit: the commit is its peeled value, which v2
    gives as a `peeled:<oid>` attribute and v0 as a separate `<ref>^{}` line."""
    found: str | None = None
    for line in lines:
        if not line or line.startswith(b"#"):
            continue
        text = line.split(b"\0", 1)[0].decode("utf-8", "replace").rstrip("\n")
        sha, _, rest = text.partition(" ")
        name, *attributes = rest.split(" ")
        if len(sha) != 40:
            continue
        if name == f"{ref}^{{}}":
            return sha
        if name == ref:
            peeled = [a.removeprefix("peeled:") for a in attributes if a.startswith("peeled:")]
            found = peeled[0] if peeled else sha
    return found


class SmartHttpHead:
    """Reads one ref of one repository; remembers whether the server speaks protocol v2."""

    def __init__(self, url: str, http: httpx.AsyncClient, headers: dict[str, str], timeout: float,
                 pool: LeanPool | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = http
        self._headers = {**headers, "Git-Protocol": "version=2", "User-Agent": AGENT}
        self._timeout = timeout
        self._v2: bool | None = None
        self._ls_refs_requests: dict[str, httpx.Request] = {}  # built once per ref: an idle poll re-sends it
        self._pool = pool  # kept-alive sockets for the lean ls-refs (leanpost.py); None: httpx only
        self._lean: dict[str, LeanPost] = {}

    async def head(self, ref: str) -> str | None:
        if self._v2 is None or not self._v2:
            advertised = await self._advertisement()
            if not self._v2:
                return find_ref(advertised, ref)  # v0: the advertisement lists every ref
        return await self._ls_refs(ref)

    async def _advertisement(self) -> list[bytes]:
        response = await self._send("GET", f"{self.url}/info/refs?service=git-upload-pack")
        if response.headers.get("content-type", "") != f"{UPLOAD_PACK}-advertisement":
            raise ProtocolError("not a smart HTTP server")
        lines = parse_pkt_lines(response.content)
        payload = [line for line in lines if line is not None and not line.startswith(b"# service=")]
        self._v2 = bool(payload) and payload[0].rstrip(b"\n") == b"version 2"
        return payload

    async def _ls_refs(self, ref: str) -> str | None:
        body = await self._lean_ls_refs(ref)
        if body is not None:
            return find_ref(parse_pkt_lines(body), ref)
        request = self._ls_refs_requests.get(ref)
        if request is None:  # the same bytes every poll: building the request was a tenth of a poll's CPU
            headers = {**self._headers, "Content-Type": f"{UPLOAD_PACK}-request", "Accept": f"{UPLOAD_PACK}-result"}
            request = self._ls_refs_requests[ref] = self._http.build_request(
                "POST", f"{self.url}/git-upload-pack", content=ls_refs_request(ref), headers=headers,
                timeout=self._timeout)
        response = await self._sent(self._http.send(request))
        if response.headers.get("content-type", "") != f"{UPLOAD_PACK}-result":
            raise ProtocolError("unexpected content type for ls-refs")
        return find_ref(parse_pkt_lines(response.content), ref)

    async def _lean_ls_refs(self, ref: str) -> bytes | None:
        """The ls-refs answer through a lean kept-alive connection (leanpost.py); None: ask httpx."""
        if self._pool is None:
            return None
        lean = self._lean.get(ref)
        if lean is None:
            headers = {**self._headers, "Content-Type": f"{UPLOAD_PACK}-request", "Accept": f"{UPLOAD_PACK}-result"}
            lean = self._lean[ref] = LeanPost(f"{self.url}/git-upload-pack", headers, ls_refs_request(ref),
                                              content_type=f"{UPLOAD_PACK}-result", timeout=self._timeout,
                                              pool=self._pool)
        try:
            return await lean.send()
        except Status as exc:  # as httpx's answer of that status would be
            raise Unreachable(str(exc)) from None

    async def _send(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return await self._sent(
            self._http.request(method, url, headers=headers, timeout=self._timeout, **kwargs))  # type: ignore[arg-type]

    @staticmethod
    async def _sent(sending: Awaitable[httpx.Response]) -> httpx.Response:
        """The response of a request being sent; a transport error or a status other than 200 is Unreachable."""
        try:
            response = await sending
        except httpx.HTTPError as exc:
            raise Unreachable(type(exc).__name__) from None
        if response.status_code != 200:
            raise Unreachable(f"{response.status_code} {response.reason_phrase}")
        return response

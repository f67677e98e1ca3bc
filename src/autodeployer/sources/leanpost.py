"""One kept-alive HTTP/1.1 connection that re-sends one fixed POST: the idle poll's `ls-refs`.

An idle poll is a head check and nothing else, so the HTTP client's own work is most of its CPU:
httpx builds and validates a request, walks its connection pool, and runs h11 and anyio per request
(~1 ms). The `ls-refs` POST of a source is the same bytes every poll; written once, sent on a kept-alive
socket, its answer read by Content-Length, it costs a fraction of that.

The HTTP/1.1 framing (the request, the status line and headers, Content-Length or chunked bodies,
keep-alive) is h11's, the protocol library httpx itself runs on; this module only skips httpx's per-request
layers above it. It is an accelerator, never the authority: it reads only a plain `200` of the expected
content type, and a status other than 200 raises :class:`Status`, which the caller
treats as it treats that status from httpx (sent once, never retried behind the caller's back). Anything
else (a compressed body, another content type, a closed or reset connection, a timeout, a proxy in
the environment) returns None, and the caller sends the request through httpx, which gives the real
answer or the real error. After `MAX_MISSES` misses in a row it
stays off for the source.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import h11
import httpx

MAX_MISSES = 3  # misses in a row before this source uses httpx only
MAX_IDLE = 50  # kept-alive connections per process (as the Git client's httpx pool keeps)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def proxied(environ: Mapping[str, str] = os.environ) -> bool:
    """A proxy is configured in the environment (the Git client honours it): httpx must send then."""
    return any(environ.get(name) or environ.get(name.upper()) for name in PROXY_VARIABLES)


class Status(Exception):
    """The server answered with a status other than 200 (`status`, `reason`: as the status line says),
    or (status 0) did not answer within the timeout."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}".strip() if status else reason)
        self.status, self.reason = status, reason


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]
Origin = tuple[str, int, bool]


class LeanPool:
    """The idle kept-alive connections of one process, per (host, port, TLS): a thousand apps on a
    hundred repositories hold at most `limit` sockets, not one each. One per process (SharedHeads
    carries it); a connection is in the pool only while no request uses it."""

    def __init__(self, limit: int = MAX_IDLE) -> None:
        self.limit = limit
        self._idle: dict[Origin, list[Streams]] = {}
        self._count = 0

    def take(self, origin: Origin) -> Streams | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        self._count -= 1
        return idle.pop()

    def give(self, origin: Origin, streams: Streams) -> None:
        if self._count >= self.limit or streams[1].is_closing():
            streams[1].close()
            return
        self._idle.setdefault(origin, []).append(streams)
        self._count += 1

    def close(self) -> None:
        for idle in self._idle.values():
            for _, writer, _ in idle:
                writer.close()
        self._idle.clear()
        self._count = 0


class LeanPost:
    """`send()` writes the fixed request and returns the body of a plain 200 answer, or None (a miss)."""

    def __init__(self, url: str, headers: Mapping[str, str], body: bytes, *, content_type: str,
                 timeout: float, pool: LeanPool) -> None:
        parts = urlsplit(url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        self._content_type = content_type.encode("latin-1")
        self._timeout = timeout
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]
        try:  # the request is the same every poll: its h11 event is built (and validated) once
            fields = [("Host", host), ("Content-Length", str(len(body))), ("Accept-Encoding", "identity"),
                      *headers.items()]
            self._request: h11.Request | None = h11.Request(method="POST", target=path, headers=[
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in fields])
        except (UnicodeEncodeError, h11.LocalProtocolError):  # not a header httpx would send as is: its business
            self._request = None
        self._body = h11.Data(data=body)
        self._origin: Origin = (self._host, self._port, self._tls)
        self._pool = pool
        self._streams: Streams | None = None  # the connection of the request under way
        self._busy = False
        self._ssl: ssl.SSLContext | None = None
        self.misses = 0
        self.usable = (parts.scheme in ("http", "https") and bool(self._host) and self._request is not None
                       and parts.username is None and not proxied())  # credentials in the URL: httpx's business

    async def send(self) -> bytes | None:
        """The answer's body, or None: then send through httpx (this connection is dropped)."""
        if not self.usable or self._busy:  # a check already under way on this source: httpx sends this one
            return None
        self._busy = True
        try:
            self._streams = self._pool.take(self._origin)
            reused = self._streams is not None
            body = await self._attempt()
            if body is None and reused:  # a kept-alive connection the server had closed meanwhile: once more
                body = await self._attempt()
        except Status:
            self.misses = 0  # the server answered: the caller reports it
            raise
        finally:
            self._busy = False
        self.misses = 0 if body is not None else self.misses + 1
        if self.misses >= MAX_MISSES:
            self.usable = False
        return body

    async def _attempt(self) -> bytes | None:
        try:
            async with asyncio.timeout(self._timeout):
                body = await self._exchange()
        except TimeoutError:  # as httpx's would be: a slow server is not asked twice
            self.close()
            raise Status(0, "ReadTimeout") from None
        except (OSError, EOFError, ValueError, ssl.SSLError, h11.ProtocolError):
            self.close()
            return None
        except BaseException:  # cancelled mid-answer: the rest of it must not be read as the next answer
            self.close()
            raise
        streams, self._streams = self._streams, None
        if streams is not None:  # the answer was read to its end: the connection can serve the next check
            self._pool.give(self._origin, streams)
        return body

    async def _exchange(self) -> bytes | None:
        if self._streams is None:
            reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._context(),
                                                           server_hostname=self._host if self._tls else None)
            self._streams = (reader, writer, h11.Connection(h11.CLIENT))
        reader, writer, conn = self._streams
        assert self._request is not None
        writer.write(b"".join(conn.send(event) or b"" for event in (self._request, self._body, h11.EndOfMessage())))
        response = await _next(conn, reader)
        if not isinstance(response, h11.Response):
            raise ValueError("no response")
        if response.status_code != 200:
            self.close()  # its body is not read: the connection cannot serve another request
            raise Status(response.status_code, response.reason.decode("latin-1"))
        headers = dict(response.headers)  # h11 lower-cases the names
        if (headers.get(b"content-type") != self._content_type
                or headers.get(b"content-encoding", b"identity") != b"identity"):
            self.close()  # whatever it is, httpx reads it properly
            return None
        parts: list[bytes] = []
        total = 0
        while not isinstance(event := await _next(conn, reader), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > MAX_BODY:
                    raise ValueError("answer too long")
                parts.append(bytes(event.data))
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # kept alive: the next poll's request goes on this connection
        else:
            self.close()  # the server closes it (Connection: close, HTTP/1.0)
        return b"".join(parts)

    def _context(self) -> ssl.SSLContext | None:
        """TLS verified as httpx does (certifi, or SSL_CERT_FILE / SSL_CERT_DIR from the environment)."""
        if not self._tls:
            return None
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context(trust_env=True)
        return self._ssl

    def close(self) -> None:
        streams, self._streams = self._streams, None
        if streams is not None:
            streams[1].close()


MAX_BODY = 1 << 20  # an ls-refs answer of one ref is a few hundred bytes: more is not what was asked


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    """h11's next event of the answer, reading from the socket while it needs data; EOFError at its end."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(65536)
        if not data:
            raise EOFError("the server closed the connection")
        conn.receive_data(data)

"""A small TCP proxy on loopback that injects network faults between the service and an emulator.

Faults are injected on real sockets, so the service sees exactly what a failing network shows it:
refused connections, resets (RST, via SO_LINGER 0), silence, slow answers and answers that never
come. The proxy understands just enough HTTP/1.1 to find request boundaries (request line, headers,
Content-Length body), so a fault can target one method: "the PUT is slow", "the connection dies
after the PUT arrived". Everything else is relayed byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Action = Literal["pass", "status", "reset", "hang", "lose-response", "delay-response", "delay-request"]
METHODS = (b"GET", b"PUT", b"POST", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS")


@dataclass
class Rule:
    """What to do with a request of one method (or of every method, key "*")."""

    action: Action = "pass"
    seconds: float = 0.0  # for delay-response / delay-request
    status: int = 500  # for status: the proxy answers itself, the node never sees the request
    headers: tuple[tuple[str, str], ...] = ()  # extra headers of that answer (e.g. retry-after)


@dataclass
class Stats:
    connections: int = 0
    requests: Counter[str] = field(default_factory=Counter)  # method -> requests seen
    paths: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of each request
    resets: int = 0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: the peer sees 'connection reset by peer'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Relays 127.0.0.1:<port> to 127.0.0.1:<upstream_port>; thread-safe controls for tests."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._lock = threading.Lock()
        self._rules: dict[str, Rule] = {}
        self._on_connect: Literal["pass", "reset", "hang"] = "pass"
        self._stats = Stats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close(reset_connections=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ controls
    def down(self) -> None:
        """Stop listening (connections are refused) and reset every open connection."""
        self._call(self._close(reset_connections=True))

    def up(self) -> None:
        self._call(self._listen())

    def on_connect(self, action: Literal["pass", "reset", "hang"]) -> None:
        """reset: accept, then RST at once; hang: accept and never answer."""
        with self._lock:
            self._on_connect = action

    def rule(self, method: str, action: Action, seconds: float = 0.0, status: int = 500,
             headers: dict[str, str] | None = None) -> None:
        """Apply `action` to every request of `method` ("*" for all) from now on."""
        with self._lock:
            self._rules[method.upper()] = Rule(action, seconds, status, tuple((headers or {}).items()))

    def clear(self) -> None:
        """Back to a faithful relay (listening, no rules)."""
        with self._lock:
            self._rules.clear()
            self._on_connect = "pass"

    def reset_connections(self) -> None:
        self._call(self._reset_all())

    # ------------------------------------------------------------------ measurement
    @property
    def connections(self) -> int:
        with self._lock:
            return self._stats.connections

    def count(self, method: str = "*") -> int:
        with self._lock:
            if method == "*":
                return sum(self._stats.requests.values())
            return self._stats.requests[method.upper()]

    def count_path(self, prefix: str, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, p in self._stats.paths if p.startswith(prefix) and method in (None, m))

    # ------------------------------------------------------------------ internals
    def _call(self, coro) -> None:  # type: ignore[no-untyped-def]
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self, reset_connections: bool) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if reset_connections:
            await self._reset_all()

    async def _reset_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    def _rule_for(self, method: str) -> Rule:
        with self._lock:
            return self._rules.get(method) or self._rules.get("*") or Rule()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._stats.connections += 1
            first = self._on_connect
        self._writers.add(writer)
        try:
            if first == "reset":
                with self._lock:
                    self._stats.resets += 1
                _reset(writer)
                return
            if first == "hang":
                await reader.read()  # until the client gives up
                return
            await self._relay(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.add(up_writer)
        pending: asyncio.Queue[Rule] = asyncio.Queue()  # one entry per forwarded request, in order
        back = asyncio.create_task(self._responses(up_reader, writer, pending))
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                method, path, raw = request
                with self._lock:
                    self._stats.requests[method] += 1
                    self._stats.paths.append((method, path))
                rule = self._rule_for(method)
                if rule.action == "reset":
                    with self._lock:
                        self._stats.resets += 1
                    _reset(writer)
                    return
                if rule.action == "hang":
                    await reader.read()  # never forwarded, never answered
                    return
                if rule.action == "status":
                    writer.write(_answer(rule.status, rule.headers))
                    await writer.drain()
                    continue
                if rule.action == "delay-request":
                    await asyncio.sleep(rule.seconds)
                await pending.put(rule)
                up_writer.write(raw)
                await up_writer.drain()
        finally:
            back.cancel()
            self._writers.discard(up_writer)
            up_writer.transport.abort()

    async def _responses(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: asyncio.Queue[Rule]
    ) -> None:
        """Relay upstream bytes; the first bytes of each answer obey the rule of its request.

        Requests on one connection are sequential (httpx does not pipeline), so an answer starts
        exactly when a new rule is waiting in `pending`.
        """
        rule = Rule()
        while True:
            chunk = await up_reader.read(65536)
            if not chunk:
                writer.close()
                return
            fresh = False
            while not pending.empty():
                rule, fresh = pending.get_nowait(), True
            if fresh and rule.action == "lose-response":
                with self._lock:
                    self._stats.resets += 1
                _reset(writer)  # the node applied it; the answer never arrives
                return
            if fresh and rule.action == "delay-response":
                await asyncio.sleep(rule.seconds)
            writer.write(chunk)
            await writer.drain()


def _answer(status: int, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    body = b'{"message": "injected by the fault proxy"}'
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (f"HTTP/1.1 {status} Injected\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """(method, path, raw bytes) of one HTTP/1.1 request (head + Content-Length body); None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    method, _, rest = head.partition(b" ")
    path = rest.split(b" ", 1)[0].decode("latin-1")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    body = await reader.readexactly(length) if length else b""
    shown = method.decode("latin-1") if method in METHODS else "OTHER"
    return shown, path, head + body

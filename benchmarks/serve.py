"""Serve a Git repository root or a Sesam emulator from a separate process.

Scenarios that measure CPU must not count the server's work as the client's: run in-process, the
server's ``git http-backend`` children would land in the benchmark's own ``RUSAGE_CHILDREN``. The Git
server is wrapped to timestamp every request and tell head checks (``ls-refs``) from fetches, which the
many-apps scenario needs to find late polls. Stats are served at ``/_bench/stats``.

Usage: ``python -m benchmarks.serve git ROOT TOKEN`` or ``python -m benchmarks.serve sesam JWT``.
Prints one JSON line ``{"port": N}`` and serves until SIGTERM or until stdin closes.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.gitserver import GitHttpServer
from autodeployer_emulators.sesam import SesamEmulator

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
STATS_PATH = "/_bench/stats"


def request_kind(method: str, path: str, body: bytes) -> str:
    """What a Git smart-HTTP request is for: advertise, ls-refs (a head check), fetch or push."""
    if method == "GET":
        return "advertise"
    if path.endswith("git-receive-pack"):
        return "push"
    if b"command=ls-refs" in body[:64]:
        return "ls-refs"
    return "fetch"


class RecordingGit:
    """ASGI wrapper: logs (monotonic time, method, path, kind) per request and serves the stats."""

    def __init__(self, server: GitHttpServer) -> None:
        self._server = server
        self._inner: ASGI = server.app
        self._log: list[tuple[float, str, str, str]] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._inner(scope, receive, send)
            return
        if scope["path"] == STATS_PATH:
            await self._stats(scope, send)
            return
        started = time.monotonic()
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        with self._lock:
            kind = request_kind(scope["method"], scope["path"], body)
            self._log.append((started, scope["method"], scope["path"], kind))
        replay = iter(messages)

        async def replay_receive() -> Message:
            return next(replay, None) or await receive()

        await self._inner(scope, replay_receive, send)

    async def _stats(self, scope: MutableMapping[str, Any], send: Any) -> None:
        query = scope.get("query_string", b"").decode()
        since = int(query.removeprefix("since=")) if query.startswith("since=") else 0
        with self._lock:
            log = self._log[since:]
            total = len(self._log)
        payload = {"bytes_sent": self._server.bytes_sent, "requests": total, "log": log}
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "git":
        git = GitHttpServer(Path(argv[1]), token=argv[2])
        server = LoopbackServer(RecordingGit(git)).start()
    elif kind == "sesam":
        server = SesamEmulator(jwt=argv[1]).serve()
    else:
        print(f"unknown server kind {kind!r}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print(json.dumps({"port": server.port}), flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

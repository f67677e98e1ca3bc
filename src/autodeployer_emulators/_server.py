"""Run an ASGI app as a real HTTP server on loopback, in a background thread.

Emulators are served this way from tests, benchmarks and the demo: the client under test talks real
HTTP over a real socket, while the test keeps an in-process handle on the emulator's state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import threading
import time
from typing import Any, Self

import uvicorn


class LoopbackServer:
    """An ASGI app listening on ``127.0.0.1`` (an ephemeral port unless one is given).

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        # IPPROTO_TCP explicitly: asyncio only disables Nagle on sockets created that way, and
        # without TCP_NODELAY every small response waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving; starting a running server does nothing (so `serve()` can hand out a
        started server and `with emulator.serve() as server:` still works)."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._run, name=f"loopback-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on port {self.port} failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start within 10 s")
            time.sleep(0.005)
        return self

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._thread = None
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def standalone_parser(name: str, default_port: int, token_variable: str) -> argparse.ArgumentParser:
    """The flags every emulator's ``python -m autodeployer_emulators.<name>`` shares.

    The token is read from ``token_variable`` only: a flag would put it in argv, where ``ps``
    shows it to every user of the machine.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m autodeployer_emulators.{name}",
        description=f"Serve the {name} emulator until Ctrl-C. Set {token_variable} to require "
                    "a token; without it, authentication is off.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port,
                        help=f"port to listen on ({default_port})")
    return parser


def token_from_env(*variables: str) -> str | None:
    """The first of ``variables`` that is set and not blank, stripped; ``None`` if none is."""
    for variable in variables:
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    return None


def serve_forever(app: Any, name: str, url: str, token_variable: str, authenticated: bool,
                  host: str, port: int) -> None:
    """Announce the emulator on stderr (never the token), then serve until interrupted."""
    auth = "token required" if authenticated else f"auth DISABLED ({token_variable} not set)"
    print(f"{name} emulator on {url} ({auth})", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host=host, port=port, log_level="warning")

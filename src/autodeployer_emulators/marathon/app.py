"""The public :class:`MarathonEmulator`: the Starlette app, loopback serving and the command line.
"""

from __future__ import annotations

from functools import cached_property

from starlette.applications import Starlette
from starlette.routing import Route

from autodeployer_emulators._server import (
    LoopbackServer,
    serve_forever,
    standalone_parser,
    token_from_env,
)
from autodeployer_emulators.marathon.routes import (
    MarathonRoutes,
)

# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class MarathonServer(LoopbackServer):
    """A :class:`LoopbackServer` whose stop also ends open event streams, so shutdown is not
    held up by a client still reading /v2/events."""

    def __init__(self, emulator: MarathonEmulator, host: str, port: int) -> None:
        super().__init__(emulator.asgi_app, host=host, port=port)
        self._emulator = emulator

    def start(self) -> MarathonServer:
        if self._thread is None:
            self._emulator._closing.clear()
        super().start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._emulator._closing.set()
        super().stop()


class MarathonEmulator(MarathonRoutes):
    """In-memory Marathon with timed deployments, auth, failure injection and a request log.

    All state sits behind one ``threading.Lock``: the server runs in another thread while the test
    inspects and steers it through the methods below.
    """

    @cached_property
    def asgi_app(self) -> Starlette:
        """The ASGI app, built once on first use: one catch-all route, the handlers route by path."""
        return Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._endpoint,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                )
            ]
        )

    # ---------------------------------------------------------------- serving

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> MarathonServer:
        """Start a real HTTP server on loopback; use as a context manager to stop it."""
        return MarathonServer(self, host, port).start()


# --------------------------------------------------------------------------------------------
# Stand-alone server
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator; the token comes from ``MARATHON_EMULATOR_TOKEN`` (never argv)."""
    parser = standalone_parser("marathon", 8080, "MARATHON_EMULATOR_TOKEN")
    parser.add_argument("--deploy-duration", type=float, default=0.2,
                        help="seconds each deployment runs (0.2)")
    args = parser.parse_args(argv)
    token = token_from_env("MARATHON_EMULATOR_TOKEN")
    emulator = MarathonEmulator(token=token, deploy_duration=args.deploy_duration)
    serve_forever(emulator.asgi_app, "Marathon", f"http://{args.host}:{args.port}",
                  "MARATHON_EMULATOR_TOKEN", token is not None, args.host, args.port)

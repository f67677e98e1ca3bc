"""The public :class:`SesamEmulator`: the Starlette app, loopback serving and the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from autodeployer_emulators._server import (
    LoopbackServer,
    serve_forever,
    standalone_parser,
    token_from_env,
)
from autodeployer_emulators.sesam.routes import (
    SesamRoutes,
    _ControlMiddleware,
)
from autodeployer_emulators.sesam.state import (
    Kind,
)


class SesamEmulator(SesamRoutes):
    """In-memory Sesam node with the HTTP API surface the deployer uses.

    ``jwt=None`` disables authentication. Switches are plain attributes (see ``__init__``).
    """

    @cached_property
    def app(self) -> Starlette:
        """The ASGI app, built once on first use (the routes are bound to this emulator)."""
        return self._build_app()

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> LoopbackServer:
        """Start serving on loopback; usable directly or as a context manager."""
        return LoopbackServer(self.app, host=host, port=port).start()

    # ---- app ---------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        entity_routes: list[Route] = []
        collections: tuple[tuple[str, Kind], ...] = (("pipes", "pipe"), ("systems", "system"))
        for collection, kind in collections:
            entity_routes += [
                Route(f"/api/{collection}", self._collection_handler(kind),
                      methods=["GET", "POST"]),
                Route(f"/api/{collection}/{{entity_id}}", self._entity_handler(kind),
                      methods=["GET", "DELETE"]),
                Route(f"/api/{collection}/{{entity_id}}/config", self._entity_config_handler(kind),
                      methods=["GET", "PUT"]),
            ]
        routes = [
            Route("/api", self._root),
            Route("/api/", self._root),
            Route("/api/health", self._health),
            Route("/api/ping", self._ping),
            Route("/api/status", self._status),
            Route("/api/config", self._config, methods=["GET", "PUT"]),
            Route("/api/config/{group}", self._config, methods=["GET", "PUT"]),
            Route("/api/metadata", self._metadata_endpoint, methods=["GET", "PUT", "DELETE"]),
            Route("/api/env", self._env_endpoint, methods=["GET", "PUT", "POST", "PATCH"]),
            Route("/api/env/{name}", self._env_delete, methods=["DELETE"]),
            Route("/api/secrets", self._secrets_endpoint, methods=["GET", "PUT", "POST"]),
            Route("/api/secrets/{key}", self._secrets_delete, methods=["DELETE"]),
            Route("/api/systems/{entity_id}/secrets", self._secrets_endpoint,
                  methods=["GET", "PUT", "POST"]),
            Route("/api/systems/{entity_id}/secrets/{key}", self._secrets_delete,
                  methods=["DELETE"]),
            Route("/api/pipes/{entity_id}/pump", self._pump, methods=["GET", "POST"]),
            Route("/api/config-all", self._config_all, methods=["GET", "PUT"]),
            Route("/api/config-history/entity", self._config_history),
            Route("/api/systems/{entity_id}/status", self._system_status),
            Route("/api/systems/{entity_id}/logs", self._system_logs),
            Route("/api/systems/{entity_id}/reload", self._system_reload, methods=["POST"]),
            *entity_routes,
        ]
        return Starlette(routes=routes, middleware=[Middleware(_ControlMiddleware, emulator=self)])


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the emulator; the token comes from ``SESAM_EMULATOR_TOKEN`` (``SESAM_EMULATOR_JWT``,
    its earlier name, still works), never from argv."""
    parser = standalone_parser("sesam", 9042, "SESAM_EMULATOR_TOKEN")
    parser.add_argument("--accept-unknown-env", action="store_true",
                        help="store uploads naming unknown $ENV variables (warning) instead of "
                             "refusing them with 400")
    parser.add_argument("--no-system-pipes", action="store_true",
                        help="start without the node's own (system, search, replica) pipes")
    args = parser.parse_args(argv)
    jwt = token_from_env("SESAM_EMULATOR_TOKEN", "SESAM_EMULATOR_JWT")
    emulator = SesamEmulator(jwt=jwt, system_pipes=not args.no_system_pipes)
    emulator.refuse_unknown_env = not args.accept_unknown_env
    serve_forever(emulator.app, "Sesam", f"http://{args.host}:{args.port}/api",
                  "SESAM_EMULATOR_TOKEN", jwt is not None, args.host, args.port)
    return 0

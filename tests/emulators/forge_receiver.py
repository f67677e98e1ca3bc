"""A loopback HTTP receiver that records what the Git host emulators deliver (for their tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from autodeployer_emulators._server import LoopbackServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str = ""
    received: list[Received] = field(default_factory=list)


@contextmanager
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    async def record(request: Request) -> JSONResponse:
        found.received.append(Received(request.url.path, dict(request.headers), await request.body()))
        return JSONResponse({"ok": True}, status_code=202)

    with LoopbackServer(Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])) as server:
        found.url = server.url
        yield found

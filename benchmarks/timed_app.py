"""An ASGI wrapper that times how long the wrapped server takes to start each answer.

Scenario 3 must tell the service's own cost from the node's: the Sesam emulator renders
``GET /config`` with Python's indenting JSON encoder, which at 50,000 entities takes seconds that a
real node would spend (or not) on its own. The wrapper records the server's think time per request and
serves the last one at ``/_bench/last`` so a sequential client can fetch it right after its request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import MutableMapping
from typing import Any

LAST_PATH = "/_bench/last"


class TimedApp:
    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.last: dict[str, float | str] = {}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["path"] == LAST_PATH:
            await self._answer_last(send)
            return
        started = time.perf_counter()

        async def timed_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                with self._lock:
                    self.last = {"method": scope["method"], "path": scope["path"],
                                 "seconds": time.perf_counter() - started}
            await send(message)

        await self._app(scope, receive, timed_send)

    async def _answer_last(self, send: Any) -> None:
        with self._lock:
            body = json.dumps(self.last).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

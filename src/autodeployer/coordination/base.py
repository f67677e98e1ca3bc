"""Which replica reconciles which app: the protocols, and the coordinator of a single replica.

A :class:`Coordinator` tells the scheduler which apps this replica owns (it starts and stops their
workers through the :class:`Workers` calls) and carries triggers for apps owned elsewhere.
:class:`LocalCoordinator` is the one replica of the default, SQLite, setup: it owns every app and every
trigger is local. Several replicas sharing PostgreSQL: :mod:`autodeployer.coordination.postgres`.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Protocol

from .. import __version__
from ..model import Trigger
from ..store.base import default_replica_id


class Workers(Protocol):
    """What a coordinator may ask of the scheduler."""

    def app_names(self) -> list[str]: ...
    def acquire(self, app: str, state: Any = None) -> bool: ...  # start its worker; False when stopping
    def drop(self, app: str) -> None: ...  # stop the app's worker (an in-flight sync finishes first)
    def stopped(self, app: str) -> bool: ...  # the worker has stopped (no sync in flight)
    def is_idle(self, app: str) -> bool: ...
    def local_trigger(self, app: str, trigger: Trigger, override_window: bool = False) -> None: ...


class Coordinator(Protocol):
    replica_id: str
    local: bool  # True: a single replica owning everything (no shared store)

    @property
    def ready(self) -> bool: ...  # ownership has been settled once
    @property
    def healthy(self) -> bool: ...  # may apply (ownership provable)
    @property
    def reason(self) -> str | None: ...  # why not healthy, for operators

    async def start(self, workers: Workers) -> None: ...
    async def stop(self) -> None: ...
    def owns(self, app: str) -> bool: ...
    def forward(self, app: str, trigger: Trigger, override_window: bool = False) -> bool: ...
    def owners(self) -> dict[str, str]: ...  # app -> replica id (empty when single or unknown)
    def owned_counts(self) -> dict[str, int]: ...  # replica id -> apps owned
    def live_replicas(self) -> int: ...
    def replicas(self) -> list[dict[str, Any]]: ...


class LocalCoordinator:
    """One replica: owns every app from the start; triggers never leave the process."""

    local = True
    ready = True
    healthy = True
    reason: str | None = None

    def __init__(self, replica_id: str | None = None) -> None:
        self.replica_id = replica_id or default_replica_id()
        self._apps: list[str] = []
        self._started_at = time.time()

    async def start(self, workers: Workers) -> None:
        self._apps = workers.app_names()
        for app in self._apps:
            workers.acquire(app)

    async def stop(self) -> None:
        return None

    def owns(self, app: str) -> bool:
        return True

    def forward(self, app: str, trigger: Trigger, override_window: bool = False) -> bool:
        return False

    def owners(self) -> dict[str, str]:
        return {}

    def owned_counts(self) -> dict[str, int]:
        return {self.replica_id: len(self._apps)}

    def live_replicas(self) -> int:
        return 1

    def replicas(self) -> list[dict[str, Any]]:
        return [{
            "id": self.replica_id, "self": True, "live": True, "host": socket.gethostname(),
            "version": __version__, "started_at": self._started_at, "heartbeat_at": time.time(),
            "heartbeat_age": 0.0, "owned_apps": len(self._apps), "apps": sorted(self._apps),
        }]

"""Which replica reconciles which app: ``base`` (the protocols and the coordinator of a single replica),
``postgres`` (several replicas sharing PostgreSQL; imported only when STORE_URL asks for it).

Coordination builds on the store (the PostgreSQL coordinator hands the store its leases); the store
never imports coordination."""

from __future__ import annotations

from .base import Coordinator, LocalCoordinator, Workers

__all__ = ["Coordinator", "LocalCoordinator", "Workers"]

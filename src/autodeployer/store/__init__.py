"""History and per-app state: ``base`` (what every store keeps and answers), ``sqlite`` (the default,
under STATE_DIR), ``postgres`` (shared by several replicas; imported only when STORE_URL asks for it)."""

from __future__ import annotations

from pathlib import Path

from .base import AppState, HistoryRow, Lease, StateChange, Store
from .sqlite import SQLiteStore, open_sqlite

__all__ = ["AppState", "HistoryRow", "Lease", "SQLiteStore", "StateChange", "Store", "open_store"]


def open_store(
    state_dir: Path, url: str | None = None, *, password: str | None = None, replica_id: str | None = None,
    memory_fallback: bool = False,
) -> Store:
    """SQLite under STATE_DIR, or PostgreSQL when `url` (STORE_URL) is set (see open_sqlite for
    `memory_fallback`)."""
    if url:
        # Imported here, not above: psycopg costs about 0.1 s, which every command on SQLite would pay.
        from .postgres import PostgresStore

        return PostgresStore(url, password=password, replica_id=replica_id)
    return open_sqlite(state_dir, memory_fallback=memory_fallback)

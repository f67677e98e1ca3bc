"""Helpers shared by the tests: recognisable secrets, Sesam config files, running the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Recognisable values: leak checks grep logs, ps output and STATE_DIR for them.
GIT_TOKEN = "gittok-SECRET-4f8a9c2e71d0"
SESAM_JWT = "sesamjwt-SECRET-9b3d5e7f13aa"
GITHUB_TOKEN = "ghp_SECRETa1b2c3d4e5f6a7b8c9d0"
WEBHOOK_SECRET = "whsec-SECRET-7e1c2a9b44f0"
ADMIN_TOKEN = "admin-SECRET-5c6d7e8f9a0b"
MARATHON_TOKEN = "dcos-SECRET-3a4b5c6d7e8f"
ALL_SECRETS = (GIT_TOKEN, SESAM_JWT, GITHUB_TOKEN, WEBHOOK_SECRET, ADMIN_TOKEN, MARATHON_TOKEN)


def entity_json(entity: dict[str, Any], indent: int = 2) -> str:
    return json.dumps(entity, indent=indent) + "\n"


def pipe(_id: str, dataset: str = "src", **extra: Any) -> dict[str, Any]:
    return {"_id": _id, "type": "pipe", "source": {"type": "dataset", "dataset": dataset}, **extra}


def system(_id: str, url: str = "http://example.org/%s", **extra: Any) -> dict[str, Any]:
    return {"_id": _id, "type": "system:url", "url_pattern": url, **extra}


def sesam_files(
    pipes: Iterable[dict[str, Any]] = (),
    systems: Iterable[dict[str, Any]] = (),
    metadata: dict[str, Any] | None = None,
    root: str = "",
) -> dict[str, str]:
    prefix = f"{root.strip('/')}/" if root.strip("/") else ""
    files = {f"{prefix}pipes/{p['_id']}.conf.json": entity_json(p) for p in pipes}
    files.update({f"{prefix}systems/{s['_id']}.conf.json": entity_json(s) for s in systems})
    if metadata is not None:
        files[f"{prefix}node-metadata.conf.json"] = entity_json(metadata)
    return files


BASE_PIPES = [pipe("orders"), pipe("customers", dataset="crm")]
BASE_SYSTEMS = [system("crm"), system("erp", url="http://erp.example.org/%s")]
BASE_METADATA = {"_id": "node", "type": "metadata", "namespaced_identifiers": False}


def base_files(root: str = "") -> dict[str, str]:
    files = sesam_files(BASE_PIPES, BASE_SYSTEMS, BASE_METADATA, root=root)
    files["README.md"] = "config\n"
    return files


def stripped(entities: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["_id"]: e for e in entities}


def run_cli(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run `autodeployer ARGS` as a real subprocess with exactly this environment."""
    return subprocess.run(
        [sys.executable, "-m", "autodeployer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: PATH and HOME only, so the developer's variables never leak in."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV") if k in os.environ}
    env.update(extra)
    return env


def history_rows(state_dir: Path, app: str | None = None) -> list[sqlite3.Row]:
    db = sqlite3.connect(str(state_dir / "history.sqlite3"))
    db.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM history" + (" WHERE app = ?" if app else "") + " ORDER BY id"
        return db.execute(query, (app,) if app else ()).fetchall()
    finally:
        db.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def window_at(start: float, seconds: float) -> dict[str, object]:
    """A deny window opening at `start` (epoch seconds, whole) for `seconds`: cron with a seconds field."""
    at = datetime.fromtimestamp(int(start), UTC)
    return {"kind": "deny", "schedule": f"{at.minute} {at.hour} {at.day} {at.month} * {at.second}",
            "duration": f"{seconds}s", "timezone": "UTC"}

"""Scale-out fixtures: many Sesam nodes on loopback, replicas as processes.

The PostgreSQL server (``pg_server``, ``pg_url``) is a shared fixture in tests/conftest.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer.web.webhook import sign
from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..conftest import Service, ServiceFactory
from ..helpers import (
    ADMIN_TOKEN,
    GIT_TOKEN,
    SESAM_JWT,
    WEBHOOK_SECRET,
    base_env,
    base_files,
    entity_json,
    pipe,
    wait_for,
)
from .pgserver import PASSWORD, PgServer

APPS = 30
HEARTBEAT = 1.0
BOUND = max(5.0, 2 * HEARTBEAT)  # the take-over bound the issue sets


class SesamNodes:
    """Many Sesam emulators behind one loopback server: node i answers under /n{i}/api."""

    def __init__(self, count: int, jwt: str = SESAM_JWT) -> None:
        self.nodes = [SesamEmulator(jwt=jwt) for _ in range(count)]
        self.server: LoopbackServer | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        first, _, rest = scope["path"].lstrip("/").partition("/")
        node = self.nodes[int(first[1:])]
        path = "/" + rest
        await node.app({**scope, "path": path, "raw_path": path.encode(), "root_path": ""}, receive, send)

    def serve(self) -> SesamNodes:
        self.server = LoopbackServer(self).start()
        return self

    def api_url(self, i: int) -> str:
        assert self.server is not None
        return f"{self.server.url}/n{i}/api"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def puts(self) -> list[int]:
        return [node.put_count for node in self.nodes]

    def has(self, i: int, entity_id: str) -> bool:
        return any(e["_id"] == entity_id for e in self.nodes[i].entities())


@dataclass
class Cluster:
    tmp: Path
    factory: ServiceFactory
    pg: PgServer
    url: str
    git: GitHttpServer
    repo: WorkRepo
    nodes: SesamNodes
    interval: float
    windows: list[dict[str, object]] = field(default_factory=list)  # every app's sync windows
    replicas: dict[str, Service] = field(default_factory=dict)

    @property
    def apps(self) -> list[str]:
        return [f"app{i:02d}" for i in range(len(self.nodes.nodes))]

    def config_file(self) -> Path:
        path = self.tmp / "apps.yaml"
        if not path.exists():
            lines = [
                "defaults:",
                "  source:",
                f"    url: {self.git.url_for('acme/config.git')}",
                "    token_env: GITHUB_TOKEN",
                "    head_check: git",
                f"  policy: {{interval: {self.interval}, windows: {json.dumps(self.windows)}}}",
                "apps:",
            ]
            for i, app in enumerate(self.apps):
                lines.append(f"  - name: {app}")
                lines.append(f"    target: {{kind: sesam, api_url: \"{self.nodes.api_url(i)}\", jwt_env: JWT}}")
            path.write_text("\n".join(lines) + "\n")
        return path

    def env(self, name: str, **extra: str) -> dict[str, str]:
        password_file = self.tmp / "store-password"
        password_file.write_text(PASSWORD + "\n")
        env = base_env(
            AUTODEPLOYER_CONFIG=str(self.config_file()),
            STATE_DIR=str(self.tmp / f"state-{name}"),
            STORE_URL=self.url,
            REPLICA_ID=name,
            HEARTBEAT_INTERVAL=str(HEARTBEAT),
            GITHUB_TOKEN=GIT_TOKEN,
            JWT=SESAM_JWT,
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            ADMIN_TOKEN=ADMIN_TOKEN,
            LOG_LEVEL="info",
        )
        # both ways of giving the password are exercised: a file for some replicas, a variable for others
        if sum(name.encode()) % 2:
            env["STORE_PASSWORD_FILE"] = str(password_file)
        else:
            env["STORE_PASSWORD"] = PASSWORD
        env.update(extra)
        return env

    def start(self, name: str, **extra: str) -> Service:
        service = self.factory(self.env(name, **extra))
        self.replicas[name] = service
        return service

    def kill(self, name: str) -> None:
        service = self.replicas.pop(name)
        os.killpg(service.proc.pid, signal.SIGKILL)
        service.proc.wait(10)

    def live(self) -> dict[str, Service]:
        return {n: s for n, s in self.replicas.items() if s.proc.poll() is None}

    # ------------------------------------------------------------------ views
    def get(self, name: str, path: str) -> Any:
        return httpx.get(self.replicas[name].url + path, timeout=10).json()

    def self_owned(self, name: str) -> set[str]:
        view = self.get(name, "/api/replicas")
        mine = [r for r in view["replicas"] if r["self"]]
        return set(mine[0]["apps"]) if mine and view["healthy"] else set()

    def db_owners(self) -> dict[str, str]:
        """app -> replica holding its advisory lock, straight from pg_locks."""
        from autodeployer.store.postgres import SQL_OWNERS

        with self.pg.connect(self.url.rsplit("/", 1)[1]) as conn:
            return dict(conn.execute(SQL_OWNERS).fetchall())

    def in_flight(self) -> list[tuple[str, str]]:
        """(app, replica) of every attempt still recorded as running."""
        with self.pg.connect(self.url.rsplit("/", 1)[1]) as conn:
            return conn.execute("SELECT app, replica FROM history WHERE result = 'running'").fetchall()

    def wait_recorded(self, timeout: float = 20) -> None:
        """Wait until every attempt's outcome is recorded. An entity shows on a node as soon as the PUT
        lands, before the owner has read back and recorded the sync; a replica killed in between leaves an
        attempt `running`, which by design blocks that app for STALE_ATTEMPT (60 s) on any other replica
        (it may be a partitioned replica still talking to the target). Tests that kill a replica to see
        the next commit applied by the new owner wait for this first."""
        wait_for(lambda: not self.in_flight(), timeout=timeout, interval=0.1,
                 what=f"every attempt recorded (in flight: {self.in_flight()})")

    def balanced(self, names: list[str]) -> dict[str, str] | None:
        """The DB view when every app has exactly one owner among `names`, spread evenly, and each
        replica's own view agrees with it; None otherwise."""
        owners = self.db_owners()
        if set(owners) != set(self.apps) or not set(owners.values()) <= set(names):
            return None
        counts = Counter(owners.values())
        if max(counts.values()) > math.ceil(len(self.apps) / len(names)) + 1 or len(counts) != len(names):
            return None
        for name in names:
            if self.self_owned(name) != {a for a, o in owners.items() if o == name}:
                return None
        return owners

    def wait_balanced(self, names: list[str], timeout: float = 30) -> dict[str, str]:
        return wait_for(lambda: self.balanced(names), timeout=timeout, interval=0.2,
                        what=f"apps spread over {names}: {Counter(self.db_owners().values())}")

    # ------------------------------------------------------------------ Git and webhooks
    def commit(self, name: str) -> str:
        self.repo.write({f"pipes/{name}.conf.json": entity_json(pipe(name))})
        self.repo.commit(f"add {name}")
        self.repo.push()
        return self.repo.head

    def webhook(self, name: str, head: str) -> httpx.Response:
        body = json.dumps({"ref": "refs/heads/master", "after": head, "repository": {"full_name": "acme/config"},
                           "head_commit": {"id": head}}).encode()
        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()), "X-GitHub-Hook-ID": "1",
                   "Content-Type": "application/json", "X-Hub-Signature-256": sign(WEBHOOK_SECRET, body)}
        return httpx.post(self.replicas[name].url + "/webhook", content=body, headers=headers, timeout=10)

    def admin(self, name: str, app: str, action: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return httpx.post(f"{self.replicas[name].url}/api/apps/{app}/{action}", json=body,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)

    def wait_everywhere(self, entity_id: str, apps: list[int] | None = None, timeout: float = 30) -> None:
        indexes = list(range(len(self.apps))) if apps is None else apps
        wait_for(lambda: all(self.nodes.has(i, entity_id) for i in indexes), timeout=timeout, interval=0.1,
                 what=f"{entity_id} on {len(indexes)} nodes "
                      f"(missing: {[i for i in indexes if not self.nodes.has(i, entity_id)]})")

    def logs(self) -> str:
        return "\n".join(s.log() for s in self.factory.started)


@pytest.fixture
def cluster_factory(tmp_path: Path, pg_server: PgServer, pg_url: str) -> Iterator[Any]:
    """Builds a Cluster: a Git server with acme/config, APPS Sesam nodes, replicas started on demand."""
    made: list[tuple[Cluster, LoopbackServer]] = []

    def build(interval: float = 2.0, apps: int = APPS, windows: list[dict[str, object]] | None = None) -> Cluster:
        git = GitHttpServer(tmp_path / "git", token=GIT_TOKEN)
        git_server = git.serve().start()
        repo = WorkRepo.create(tmp_path / "git" / "acme" / "config.git", tmp_path / "work", branch="master")
        repo.write(base_files())
        repo.commit("initial configuration")
        repo.push()
        nodes = SesamNodes(apps).serve()
        cluster = Cluster(tmp_path, ServiceFactory(tmp_path), pg_server, pg_url, git, repo, nodes, interval,
                          list(windows or []))
        made.append((cluster, git_server))
        return cluster

    try:
        yield build
    finally:
        for cluster, git_server in made:
            cluster.factory.close()
            cluster.nodes.stop()
            git_server.stop()


def ps_snapshot() -> str:
    return subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout


def wait_time(predicate: Any, timeout: float, interval: float = 0.05) -> float:
    """Seconds until `predicate` holds (AssertionError after `timeout`)."""
    start = time.monotonic()
    wait_for(predicate, timeout=timeout, interval=interval, what="condition")
    return time.monotonic() - start

"""Marathon / DC/OS target: apps and groups from ``specs/*.json``, the dploy layout.

Desired state is every top-level ``*.json`` in SPECS_DIR at SYNC_ROOT, in file-name order. A file
whose object has ``apps`` or ``groups`` is a group, any other object an app. Groups are flattened into
apps with absolute ids, and every app carries the label ``DPLOY=<app_name>``, which is how the apps
we own are found again (``GET /v2/apps?label=DPLOY==<app_name>``).

Apps are compared only on the fields Git sets, so Marathon's server-side defaults never cause a
redeploy; the specs of the last successful apply are kept in the target memory, so a field deleted
from Git is still seen as a change. Each changed app is written on its own with
``PUT /v2/apps/{id}?partialUpdate=false``, also when it sits in a group file: a group PUT would restart
or stop its siblings, and a plan with one changed app must write exactly one app. A group itself is
only written (``PUT /v2/groups/{id}`` with its ``dependencies`` alone) when those dependencies change.
Every deployment is followed until it leaves ``/v2/deployments``, then the task counts are checked.

The package: ``spec`` (settings), ``desired`` (the tree into apps and groups), ``diff`` (live
against desired, the payload), ``client`` (Marathon's API), and here the target that runs them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ...errors import TargetError
from ...logs import get_logger
from ...model import ApplyReport, HealthReport, Plan, Problem, Tree
from ..base import HealthRequest, SyncContext, TargetDeps
from ..transport import error_detail
from .client import MarathonClient
from .desired import Desired, parse_desired
from .diff import Live, Payload
from .diff import diff as plan_diff
from .health import marathon_health
from .spec import KIND, SECRET_KEYS, VARIABLES, Spec, spec_from_env, spec_from_yaml

__all__ = [
    "KIND", "SECRET_KEYS", "VARIABLES", "MarathonTarget", "Spec", "create", "spec_from_env", "spec_from_yaml",
]


def health_problems(app: dict[str, Any]) -> list[str]:
    """What keeps a deployed app from being up: task counts below instances, unhealthy tasks."""
    instances = int(app.get("instances") or 0)
    running = int(app.get("tasksRunning") or 0)
    found = []
    if running != instances:
        found.append(f"{running} of {instances} task(s) running")
    if app.get("healthChecks"):
        healthy = int(app.get("tasksHealthy") or 0)
        if healthy != instances:
            found.append(f"{healthy} of {instances} task(s) healthy")
    return found


@dataclass
class Write:
    """One write that started a deployment."""

    kind: str  # app | group | delete
    id: str
    deployment: str | None
    previous_version: str | None = None


class MarathonTarget:
    kind = KIND

    def __init__(self, spec: Spec, deps: TargetDeps) -> None:
        self.spec = spec
        self.client = MarathonClient(spec, deps.http)
        self._cache: tuple[str, Desired] | None = None

    # ------------------------------------------------------------------ read
    def desired(self, tree: Tree) -> Desired:
        """Parsed specs, cached per tree so drift checks do not re-parse Git."""
        if self._cache and tree.tree_id and self._cache[0] == tree.tree_id:
            return self._cache[1]
        desired = parse_desired(tree, self.spec.specs_dir, self.spec.app_name)
        self._cache = (tree.tree_id, desired)
        return desired

    def prefetch(self) -> asyncio.Task[Any]:
        """The apps carrying our label do not depend on Git: list them while Git is fetched."""
        return asyncio.get_running_loop().create_task(self.client.managed_apps())

    async def live(self, desired: Desired, memory: dict[str, Any] | None = None,
                   listed: asyncio.Task[Any] | None = None) -> Live:
        body = await listed if listed is not None else await self.client.managed_apps()
        managed = {a["id"]: a for a in (body or {}).get("apps", []) if isinstance(a, dict) and "id" in a}
        missing = [i for i in desired.apps if i not in managed]
        limit = asyncio.Semaphore(8)

        async def one(app_id: str) -> dict[str, Any] | None:
            async with limit:
                found = await self.client.get(f"/v2/apps{app_id}")
            return found.get("app") if isinstance(found, dict) else None

        fetched = await asyncio.gather(*(one(i) for i in missing))
        apps: dict[str, dict[str, Any] | None] = {i: managed.get(i) for i in desired.apps}
        apps.update(zip(missing, fetched, strict=True))  # gather keeps the order
        previous_groups = (memory or {}).get("groups") or {}
        groups: dict[str, list[str] | None] = {}
        for group_id, group in desired.groups.items():
            if group.dependencies is not None or group_id in previous_groups:
                found = await self.client.get(f"/v2/groups{group_id}" if group_id != "/" else "/v2/groups")
                groups[group_id] = list(found.get("dependencies") or []) if isinstance(found, dict) else None
        return Live(managed, apps, groups)

    async def plan(self, ctx: SyncContext) -> Plan:
        desired = self.desired(ctx.tree)
        live = await self.live(desired, ctx.memory, ctx.prefetched)
        return plan_diff(desired, live, ctx.memory, prune=self.spec.prune, app_name=self.spec.app_name)

    async def verify(self, plan: Plan, ctx: SyncContext) -> Plan:
        """Read back after apply; the applied specs are the memory now, so only real drift remains."""
        desired = self.desired(ctx.tree)
        memory = plan.payload.memory() if isinstance(plan.payload, Payload) else None
        live = await self.live(desired, memory)
        return plan_diff(desired, live, memory, prune=self.spec.prune, app_name=self.spec.app_name)

    # ------------------------------------------------------------------ write
    async def apply(self, plan: Plan, ctx: SyncContext) -> ApplyReport:
        payload: Payload = plan.payload
        log = ctx.log or get_logger(app=ctx.app.name)
        deadline = time.monotonic() + self.spec.deploy_timeout
        writes: list[Write] = []
        for app_id in payload.puts:
            body = payload.desired.apps[app_id].spec
            deployment = await self.client.write("PUT", f"/v2/apps{app_id}", body, app_id, deadline, log,
                                                 partial_update=False)
            writes.append(Write("app", app_id, deployment, payload.previous_versions.get(app_id)))
        for group_id, dependencies in payload.group_puts.items():
            body = {"id": group_id, "dependencies": dependencies}
            path = f"/v2/groups{group_id}" if group_id != "/" else "/v2/groups"
            deployment = await self.client.write("PUT", path, body, group_id, deadline, log)
            writes.append(Write("group", group_id, deployment))
        for app_id in payload.deletes:
            deployment = await self.client.write("DELETE", f"/v2/apps{app_id}", None, app_id, deadline, log)
            writes.append(Write("delete", app_id, deployment))
        running = await self.client.wait_gone({w.deployment for w in writes if w.deployment}, deadline)
        failed = await self._check(writes, running)
        details: dict[str, Any] = {
            "deployments": {w.id: w.deployment for w in writes if w.deployment},
            "written": [f"{w.kind} {w.id}" for w in writes],
        }
        if failed:
            await self._fail(failed, running, log)
        log.info("marathon deployments finished", apps=len(payload.puts), groups=len(payload.group_puts),
                 pruned=len(payload.deletes))
        return ApplyReport(details=details, memory=payload.memory())

    async def _check(self, writes: list[Write], running: set[str]) -> dict[str, tuple[Write, list[str]]]:
        """Failed writes with their reasons: a deployment still running, or tasks short or unhealthy."""
        failed: dict[str, tuple[Write, list[str]]] = {}
        for write in writes:
            reasons: list[str] = []
            if write.deployment in running:
                reasons.append(f"deployment {write.deployment} did not finish within {self.spec.deploy_timeout:g} s")
            elif write.kind == "app":
                found = await self.client.get(f"/v2/apps{write.id}")
                app = found.get("app") if isinstance(found, dict) else None
                if app is None:
                    reasons.append("the app is missing after its deployment")
                else:
                    reasons.extend(health_problems(app))
                    if app.get("deployments"):
                        reasons.append("another deployment of the app is still running")
            elif write.kind == "delete" and await self.client.get(f"/v2/apps{write.id}") is not None:
                reasons.append("the app still exists after its removal")
            if reasons:
                failed[write.id] = (write, reasons)
        return failed

    async def _fail(self, failed: dict[str, tuple[Write, list[str]]], running: set[str], log: Any) -> None:
        problems = [Problem("; ".join(reasons), entity=i) for i, (_, reasons) in failed.items()]
        message = f"deployment failed for {', '.join(failed)}"
        if self.spec.rollback_on_failure:
            notes = await self._rollback([w for w, _ in failed.values()], running)
            problems += [Problem(f"rolled back: {note}", entity=i) for i, note in notes]
            message += "; rolled back (ROLLBACK_ON_FAILURE=true)"
            log.warning("marathon deployment rolled back", apps=list(failed), notes=[n for _, n in notes])
        raise TargetError(message, problems=problems)

    async def _rollback(self, writes: list[Write], running: set[str]) -> list[tuple[str, str]]:
        """Undo failed writes: cancel a running deployment (Marathon then reverts it), or restore
        the previous version of an app whose deployment ended with tasks short."""
        notes: list[tuple[str, str]] = []
        started: set[str] = set()
        for write in writes:
            note, deployment = await self._undo(write, write.deployment in running)
            notes.append((write.id, note))
            if deployment:
                started.add(deployment)
        still = await self.client.wait_gone(started, time.monotonic() + self.spec.deploy_timeout)
        if still:
            notes.append(("rollback", f"rollback deployment(s) {', '.join(sorted(still))} still running"))
        return notes

    async def _undo(self, write: Write, running: bool) -> tuple[str, str | None]:
        if running and write.deployment:
            response = await self.client.call("DELETE", f"/v2/deployments/{write.deployment}")
            if response.status_code == 200:
                rollback = (self.client.json(response, "DELETE deployment") or {}).get("deploymentId")
                return f"deployment {write.deployment} cancelled, rollback deployment {rollback}", rollback
            if response.status_code != 404:
                status = f"{response.status_code} {error_detail(response)}"
                return f"DELETE /v2/deployments/{write.deployment}: {status}", None
        if write.kind != "app":
            return "nothing to roll back: the deployment had already ended", None
        if write.previous_version:
            body = {"version": write.previous_version}
            response = await self.client.call("PUT", f"/v2/apps{write.id}", json=body)
            what = f"restored version {write.previous_version}"
        else:
            response = await self.client.call("DELETE", f"/v2/apps{write.id}")
            what = "removed the new app"
        if response.status_code not in (200, 201):
            return f"{what} failed: {response.status_code} {error_detail(response)}", None
        return what, (self.client.json(response, "rollback") or {}).get("deploymentId")

    # ------------------------------------------------------------------ health (targets.base.HealthCheck)
    def watches_health(self) -> bool:
        return True

    async def health(self, request: HealthRequest) -> HealthReport:
        """The deployed apps' tasks: running, healthy, no new task failure (see health.py)."""
        return await marathon_health(self.client, request)

    async def aclose(self) -> None:
        return None


def create(spec: Spec, deps: TargetDeps) -> MarathonTarget:
    return MarathonTarget(spec, deps)

"""How healthy a Marathon deploy is: the deployed apps' task counters and their last task failure.

Read from ``GET /v2/apps/{id}?embed=app.lastTaskFailure`` (reference section 3): ``instances``,
``tasksRunning``, ``tasksHealthy``, ``tasksUnhealthy`` (health counts only apps with ``healthChecks``),
``deployments`` (non-empty while one runs) and ``lastTaskFailure`` (``state``, ``message``,
``timestamp`` ISO 8601, ``version``). The apply already waited for the deployments and checked the
counts once; this is the look repeated over the health window, when tasks that started well fail.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ...model import Action, Health, HealthReport, Plan
from ..base import HealthRequest
from .client import MarathonClient
from .diff import Payload


def deployed_apps(plan: Plan) -> list[str]:
    """The apps the deploy wrote (a removed app has no health to watch)."""
    if isinstance(plan.payload, Payload):
        return list(plan.payload.puts)
    return [c.id for c in plan.changes if c.kind == "app" and c.action is not Action.REMOVE]


def _epoch(value: Any) -> float | None:
    """Marathon's ISO 8601 timestamps (``2026-12-03T12:00:00.123Z``) as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def app_evidence(app_id: str, app: dict[str, Any] | None, deployed_at: float) -> tuple[Health, list[str]]:
    """One app's reading: degraded with what is wrong, checking while a deployment runs, else healthy."""
    if app is None:
        return Health.DEGRADED, [f"app {app_id}: missing from Marathon"]
    if app.get("deployments"):
        return Health.CHECKING, [f"app {app_id}: a deployment is still running"]
    instances = int(app.get("instances") or 0)
    running, unhealthy = int(app.get("tasksRunning") or 0), int(app.get("tasksUnhealthy") or 0)
    found: list[str] = []
    if unhealthy:
        found.append(f"app {app_id}: {unhealthy} task(s) unhealthy (tasksUnhealthy)")
    if running < instances:
        found.append(f"app {app_id}: {running} of {instances} task(s) running")
    if app.get("healthChecks") and int(app.get("tasksHealthy") or 0) < instances and not unhealthy:
        found.append(f"app {app_id}: {int(app.get('tasksHealthy') or 0)} of {instances} task(s) healthy")
    failure = app.get("lastTaskFailure")
    if isinstance(failure, dict):
        at = _epoch(failure.get("timestamp"))
        if at is not None and at >= deployed_at:  # a failure from before this deploy is not news
            found.append(f"app {app_id}: last task failure {failure.get('state', '?')} at {failure.get('timestamp')}: "
                         f"{str(failure.get('message') or '')[:200]}")
    return (Health.DEGRADED, found) if found else (Health.HEALTHY, [])


async def marathon_health(client: MarathonClient, request: HealthRequest) -> HealthReport:
    """Every deployed app's reading; the worst decides (degraded over checking over healthy)."""
    seen: set[Health] = set()
    evidence: dict[Health, list[str]] = {Health.DEGRADED: [], Health.CHECKING: [], Health.HEALTHY: []}
    for app_id in deployed_apps(request.plan):
        body = await client.get(f"/v2/apps{app_id}", embed="app.lastTaskFailure")
        app = body.get("app") if isinstance(body, dict) else None
        state, notes = app_evidence(app_id, app, request.started_at)
        seen.add(state)
        evidence[state].extend(notes)
    for worst in (Health.DEGRADED, Health.CHECKING):
        if worst in seen:
            return HealthReport(worst, tuple(evidence[worst]))
    return HealthReport(Health.HEALTHY)

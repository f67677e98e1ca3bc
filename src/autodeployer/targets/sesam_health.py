"""How healthy a Sesam deploy is: the changed pipes' runs, the changed systems' config, the node's health.

What is read, and why these fields (Sesam's API description, and sesamclient's ``Pump``, which reads
the same keys from ``runtime``):

* ``GET /api/pipes/{id}/pump`` -> ``{"_id": "pump:<id>", "runtime": {...}}``: ``last-run`` (ISO 8601 or
  null), ``success`` (null before the first run), ``last-message``, ``last-original-error-message``,
  ``is-valid-config``, ``config-errors`` ``[{"level", "elements", "msg"}]``. A run that ended after the
  deploy started with ``success: false`` is a new failure; a failure dated before it is not news (the
  node's clock is trusted to be within the health window of ours).
* ``GET /api/systems/{id}`` -> ``runtime.is-valid-config`` / ``runtime.config-errors``.
* More than ``FEW`` changed: ``GET /api/pipes?fields=runtime`` (a pipe's ``runtime`` carries its pump's keys)
  and ``GET /api/systems``, once per look, instead of a request per entity (a 1,000-pipe deploy would
  otherwise cost 1,000 requests every ``health_poll`` seconds).
* ``GET /api/health`` -> 200 ``{"status": "ok"}``, 503 when the node is unhealthy.

A pipe or system the deploy removed has nothing to watch; one the node does not know (404) is degraded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import TargetError
from ..model import Action, Health, HealthReport, Plan
from .base import HealthRequest
from .transport import request

TIMEOUT = 30.0  # seconds one health read may take
FEW = 8  # changed pipes (or systems) read one by one; more are read from one listing


def changed_entities(plan: Plan) -> tuple[list[str], list[str]]:
    """(pipes, systems) the deploy added or changed; metadata and removed entities are not watched."""
    pipes = [c.id for c in plan.changes if c.kind == "pipe" and c.action is not Action.REMOVE]
    systems = [c.id for c in plan.changes if c.kind.startswith("system") and c.action is not Action.REMOVE]
    return pipes, systems


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def config_errors(kind: str, entity_id: str, runtime: dict[str, Any]) -> list[str]:
    """The errors the node holds against an entity's configuration."""
    errors = [e for e in runtime.get("config-errors") or [] if isinstance(e, dict) and e.get("level") == "error"]
    if runtime.get("is-valid-config") is False or errors:
        text = "; ".join(f"{e.get('elements', '$')}: {e.get('msg', '')}" for e in errors[:3]) or "invalid config"
        return [f"{kind} {entity_id}: {text}"]
    return []


def pump_evidence(pipe_id: str, runtime: dict[str, Any], since: float) -> list[str]:
    """A pipe's run that failed after `since` (epoch seconds), or an invalid config."""
    found = config_errors("pipe", pipe_id, runtime)
    ran_at = _epoch(runtime.get("last-run"))
    if runtime.get("success") is False and ran_at is not None and ran_at >= since:
        message = runtime.get("last-original-error-message") or runtime.get("last-message") or "failed"
        found.append(f"pipe {pipe_id}: run at {runtime.get('last-run')} failed: {str(message)[:200]}")
    return found


class SesamHealth:
    """One look at a node's health for one deploy, through the target's client and credentials."""

    def __init__(self, api_url: str, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self._api_url = api_url
        self._http = http
        self._headers = headers

    async def _get(self, path: str) -> tuple[int, Any]:
        url = f"{self._api_url}{path}"
        response = await request(self._http, "GET", url, headers=self._headers, timeout=TIMEOUT, retries=1)
        if response.status_code in (401, 403):
            raise TargetError(f"GET {url}: authentication failed ({response.status_code}); check JWT")
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    async def check(self, req: HealthRequest) -> HealthReport:
        evidence = await self._node()
        pipes, systems = changed_entities(req.plan)
        if len(pipes) > FEW:  # one listing rather than a request per pipe every look
            runtimes = await self._runtimes("pipes", "?fields=runtime")
            for pipe_id in pipes:
                runtime = runtimes.get(pipe_id)
                evidence += (pump_evidence(pipe_id, runtime, req.started_at) if runtime is not None
                             else [f"pipe {pipe_id}: not on the node"])
        else:
            for pipe_id in pipes:
                evidence += await self._pipe(pipe_id, req.started_at)
        if len(systems) > FEW:
            runtimes = await self._runtimes("systems", "")
            for system_id in systems:
                runtime = runtimes.get(system_id)
                evidence += (config_errors("system", system_id, runtime) if runtime is not None
                             else [f"system {system_id}: not on the node"])
        else:
            for system_id in systems:
                evidence += await self._system(system_id)
        return HealthReport(Health.DEGRADED, tuple(evidence)) if evidence else HealthReport(Health.HEALTHY)

    async def _runtimes(self, kind: str, query: str) -> dict[str, dict[str, Any]]:
        """`GET /api/pipes?fields=runtime` (or `/api/systems`): each entity's runtime by id. A pipe's runtime
        carries its pump's keys (`last-run`, `success`, ...), so one listing answers for every changed pipe."""
        status, body = await self._get(f"/{kind}{query}")
        if status != 200 or not isinstance(body, list):
            raise TargetError(f"GET {self._api_url}/{kind}{query}: {status} {error_detail_of(body)}")
        return {str(item["_id"]): item.get("runtime") or {} for item in body
                if isinstance(item, dict) and "_id" in item}

    async def _node(self) -> list[str]:
        """503 is the node's own "unhealthy" (not a transient failure to retry): evidence at once."""
        url = f"{self._api_url}/health"
        try:
            response = await self._http.get(url, headers=self._headers, timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            raise TargetError(f"GET {url}: {type(exc).__name__}") from None
        status = response.status_code
        if status == 200:
            return []
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("status") if isinstance(body, dict) else None
        return [f"node health: GET {self._api_url}/health answered {status}{f' ({detail})' if detail else ''}"]

    async def _pipe(self, pipe_id: str, since: float) -> list[str]:
        status, body = await self._get(f"/pipes/{quote(pipe_id, safe='')}/pump")
        if status == 404:
            return [f"pipe {pipe_id}: not on the node"]
        if status != 200 or not isinstance(body, dict):
            raise TargetError(f"GET {self._api_url}/pipes/{pipe_id}/pump: {status} {error_detail_of(body)}")
        return pump_evidence(pipe_id, body.get("runtime") or {}, since)

    async def _system(self, system_id: str) -> list[str]:
        status, body = await self._get(f"/systems/{quote(system_id, safe='')}")
        if status == 404:
            return [f"system {system_id}: not on the node"]
        if status != 200 or not isinstance(body, dict):
            raise TargetError(f"GET {self._api_url}/systems/{system_id}: {status} {error_detail_of(body)}")
        return config_errors("system", system_id, body.get("runtime") or {})


def error_detail_of(body: Any) -> str:
    """The node's message, when its answer carried one."""
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("message") or body.get("title") or "")[:200]
    return ""

"""The JSON API: status and history for anyone who can reach the port; actions need ADMIN_TOKEN.

Actions are queued on the app's worker (never run inside the request), so they respect the
one-sync-at-a-time rule; the answer is 202 and the outcome appears in status and history.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import AutodeployerError, StoreUnavailable
from ..model import Reason, Result, Status, Trigger
from ..previews import PreviewService
from ..runtime import Runtime
from ..scheduling import Scheduler
from ..status import app_row, history_row
from ..store import Store

MAX_HISTORY = 500


def override_requested(request: Request) -> bool:
    """POST /api/apps/<app>/sync?override_window=true: deploy even outside the app's sync windows."""
    return request.query_params.get("override_window", "").strip().lower() in ("1", "true", "yes")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Api:
    def __init__(self, runtime: Runtime, scheduler: Scheduler, *, previews: PreviewService | None = None) -> None:
        self.runtime = runtime
        self.scheduler = scheduler
        self.previews = previews  # None unless PREVIEWS=true
        token = runtime.config.service.admin_token
        self._admin_token = token.get_secret_value() if token else None

    @property
    def store(self) -> Store:
        return self.runtime.store

    def rows(self) -> list[dict[str, Any]]:
        apps = self._apps()
        states = self.store.states([a.name for a in apps])  # PostgreSQL: one query for every app
        owners = self.scheduler.coordinator.owners()
        beats = self._heartbeats() if owners else {}
        return [self._row(app, states.get(app.name), owners, beats) for app in apps]

    def _heartbeats(self) -> dict[str, Any]:
        return {r["id"]: r.get("heartbeat_at") for r in self.scheduler.coordinator.replicas()}

    def _row(self, app: Any, state: Any = None, owners: dict[str, str] | None = None,
             beats: dict[str, Any] | None = None) -> dict[str, Any]:
        owners = self.scheduler.coordinator.owners() if owners is None else owners
        owner = owners.get(app.name)
        if owner is None:
            return app_row(app, self.store, self.scheduler.worker(app.name), state=state)
        if beats is None:
            beats = self._heartbeats()
        return app_row(app, self.store, self.scheduler.worker(app.name), owner=owner,
                       owner_heartbeat_at=beats.get(owner), state=state)

    def _unavailable(self) -> JSONResponse | None:
        """Admin actions need the shared store: refuse clearly while it is unreachable."""
        coordinator = self.scheduler.coordinator
        if coordinator.local or coordinator.healthy:
            return None
        return _error(503, f"this replica cannot reach the shared store: {coordinator.reason}")

    def _apps(self) -> list[Any]:
        return [r.app for r in self.runtime.reconcilers.values()]

    def _app(self, request: Request) -> Any:
        name = request.path_params["app"]
        reconciler = self.runtime.reconcilers.get(name)
        return reconciler.app if reconciler else None

    def _denied(self, request: Request) -> JSONResponse | None:
        if self._admin_token is None:
            return _error(403, "admin actions are disabled: set ADMIN_TOKEN to enable them")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._admin_token.encode()):
            return JSONResponse({"error": "missing or wrong admin token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return None

    # ------------------------------------------------------------------ reads
    async def list_apps(self, request: Request) -> JSONResponse:
        warning = self.store.warning  # STATE_DIR unwritable: history kept in memory
        return JSONResponse({"apps": self.rows(), **({"store_warning": warning} if warning else {})})

    async def get_app(self, request: Request) -> JSONResponse:
        app = self._app(request)
        if app is None:
            return _error(404, f"no app named {request.path_params['app']!r}")
        return JSONResponse(self._row(app))

    async def history(self, request: Request) -> JSONResponse:
        app = self._app(request)
        if app is None:
            return _error(404, f"no app named {request.path_params['app']!r}")
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            limit = 0
        if limit < 1:  # 0 or -1 asked for nothing (or everything): say so rather than guess
            return _error(400, f"limit must be a whole number of at least 1 (at most {MAX_HISTORY} rows are returned)")
        limit = min(MAX_HISTORY, limit)
        try:
            rows = self.store.history(app.name, limit)
        except StoreUnavailable as exc:
            return _error(503, str(exc))
        return JSONResponse({"app": app.name, "history": [history_row(r) for r in rows]})

    async def list_previews(self, request: Request) -> JSONResponse:
        """Open pull-request previews of the app (empty when PREVIEWS is off), with their full plans."""
        app = self._app(request)
        if app is None:
            return _error(404, f"no app named {request.path_params['app']!r}")
        found = self.previews.previews(app.name) if self.previews is not None else []
        return JSONResponse({"app": app.name, "enabled": self.previews is not None,
                             "previews": [p.to_json() for p in found]})

    def coordination(self) -> dict[str, Any]:
        """This replica's view of the fleet: whether it may apply (and why not), every replica's last
        heartbeat and the apps it owns. Served as /api/replicas and shown on the status page."""
        coordinator = self.scheduler.coordinator
        return {
            "mode": "single" if coordinator.local else "postgresql",
            "self": coordinator.replica_id,
            "healthy": coordinator.healthy,
            "reason": coordinator.reason,
            "replicas": coordinator.replicas(),
        }

    async def replicas(self, request: Request) -> JSONResponse:
        return JSONResponse(self.coordination())

    # ------------------------------------------------------------------ actions
    async def action(self, request: Request) -> JSONResponse:
        denied = self._denied(request)
        if denied:
            return denied
        app = self._app(request)
        if app is None:
            return _error(404, f"no app named {request.path_params['app']!r}")
        action = request.path_params["action"]
        name = app.name
        if action in ("sync", "suspend", "resume", "rollback"):
            unavailable = self._unavailable()
            if unavailable:
                return unavailable
        if action == "sync" and override_requested(request):
            if not self.scheduler.sync_overriding_window(name):
                owner = self.scheduler.coordinator.owners().get(name) or "another replica"
                return _error(503, f"{name}: the sync overriding the app's windows could not be handed to the "
                              f"replica running it ({owner}); nothing was queued, try again")
            return JSONResponse({"app": name, "queued": "sync", "override_window": True}, status_code=202)
        if action == "sync":
            self.scheduler.trigger(name, Trigger.MANUAL)
            return JSONResponse({"app": name, "queued": "sync"}, status_code=202)
        try:  # the action's own write: an operator is never told "suspended" when it was not saved
            if action == "suspend":
                self.scheduler.suspend(name, "suspended through the API")
                return JSONResponse(self._row(app))
            if action == "resume":
                self.scheduler.resume(name)
                return JSONResponse(self._row(app), status_code=202)
        except StoreUnavailable as exc:
            return _error(503, f"{action} not saved: {exc}")
        if action == "rollback":
            try:
                body = await request.json()
            except ValueError:
                return _error(400, 'body must be JSON: {"revision": "<sha>"}')
            revision = body.get("revision") if isinstance(body, dict) else None
            if not isinstance(revision, str):
                return _error(400, 'body must be JSON: {"revision": "<sha>"}')
            try:
                sha = await self.scheduler.rollback(name, revision)
            except StoreUnavailable as exc:
                return _error(503, f"rollback not saved: {exc}")
            except AutodeployerError as exc:  # the revision does not resolve
                return _error(422, str(exc))
            return JSONResponse(
                {"app": name, "queued": "rollback", "revision": sha,
                 "note": "auto-sync is suspended for this app; resume to follow the branch again"},
                status_code=202,
            )
        return _error(404, f"unknown action {action!r}")

    def routes(self) -> list[Route]:
        return [
            Route("/api/apps", self.list_apps, methods=["GET"]),
            Route("/api/apps/{app}", self.get_app, methods=["GET"]),
            Route("/api/apps/{app}/history", self.history, methods=["GET"]),
            Route("/api/apps/{app}/previews", self.list_previews, methods=["GET"]),
            Route("/api/apps/{app}/{action:str}", self.action, methods=["POST"]),
            Route("/api/replicas", self.replicas, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        ]


async def openapi_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)


_APP = {"$ref": "#/components/schemas/App"}
_ERR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
_APP_PARAM = {"name": "app", "in": "path", "required": True, "schema": {"type": "string"}}


_HISTORY = {"$ref": "#/components/schemas/HistoryRow"}


def _webhook(summary: str) -> dict[str, Any]:
    return {"post": {"summary": summary, "responses": {
        "200": {"description": "ping or duplicate"}, "202": {"description": "queued or ignored"},
        "204": {"description": "other event"}, "400": _ERR, "401": _ERR, "408": _ERR, "413": _ERR, "415": _ERR}}}


def _action(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": _ADMIN,
        "parameters": [_APP_PARAM],
        "responses": {"200": {"description": "Done"}, "202": {"description": "Queued"},
                      "401": _ERR, "403": _ERR, "404": _ERR},
    }
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"].update({"400": _ERR, "422": _ERR})
    return {"post": op}


def _with_query(path: dict[str, Any], parameter: dict[str, Any]) -> dict[str, Any]:
    path["post"]["parameters"] = [*path["post"]["parameters"], parameter]
    path["post"]["responses"]["503"] = _ERR  # could not be handed to the replica running the app
    return path


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "autodeployer", "version": "1", "description": "Status, history and actions of the apps."},
    "paths": {
        "/healthz": {"get": {"summary": "The process is alive", "responses": {"200": {"description": "OK"}}}},
        "/readyz": {"get": {"summary": "Every app has completed one reconcile attempt",
                            "responses": {"200": {"description": "Ready"}, "503": {"description": "Not yet"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text format"}}}},
        "/webhook": _webhook("GitHub push webhook (X-Hub-Signature-256 required)"),
        "/dploy": _webhook("The same webhook at the path dploy's observer used (hooks registered for dploy "
                           "projects point here)"),
        "/api/apps": {"get": {"summary": "All apps", "responses": {"200": {"description": "Apps", "content": {
            "application/json": {"schema": {"type": "object", "properties": {"apps": {"type": "array", "items": _APP},
                "store_warning": {"type": "string", "description": "Set while STATE_DIR cannot be written: "
                                  "history and state are kept in memory"}}}}}}}}},
        "/api/apps/{app}": {"get": {"summary": "One app", "parameters": [_APP_PARAM], "responses": {
            "200": {"description": "App", "content": {"application/json": {"schema": _APP}}}, "404": _ERR}}},
        "/api/apps/{app}/history": {"get": {
            "summary": "Sync history, newest first, with diffs",
            "parameters": [_APP_PARAM, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                                   "default": 20},
                                        "description": f"Rows to return; more than {MAX_HISTORY} returns "
                                                       f"{MAX_HISTORY}"}],
            "responses": {"200": {"description": "History", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"app": {"type": "string"},
                                                 "history": {"type": "array", "items": _HISTORY}}}}}},
                          "400": _ERR, "404": _ERR, "503": _ERR}}},
        "/api/apps/{app}/previews": {"get": {
            "summary": "Open pull-request previews: the plan of each PR's merge against the live target",
            "parameters": [_APP_PARAM],
            "responses": {"200": {"description": "Previews", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"app": {"type": "string"}, "enabled": {"type": "boolean"},
                                                 "previews": {"type": "array", "items": {"type": "object"}}}}}}},
                          "404": _ERR}}},
        "/api/replicas": {"get": {
            "summary": "Replicas sharing the apps (one in single-replica mode), their heartbeats and owned apps",
            "responses": {"200": {"description": "Replicas", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/Replicas"}}}}}}},
        "/api/apps/{app}/sync": _with_query(_action("Queue a sync now"), {
            "name": "override_window", "in": "query", "schema": {"type": "boolean", "default": False},
            "description": "Deploy even outside the app's sync windows (recorded as details.window_override)"}),
        "/api/apps/{app}/suspend": _action("Stop syncing this app automatically"),
        "/api/apps/{app}/resume": _action("Follow the branch again (and sync now)"),
        "/api/apps/{app}/rollback": _action(
            "Deploy an earlier commit and suspend auto-sync",
            {"type": "object", "required": ["revision"], "properties": {"revision": {"type": "string"}}},
        ),
    },
    "components": {
        "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            "App": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"}, "target": {"type": "string"},
                    "endpoint": {"type": "string", "nullable": True},
                    "repository": {"type": "string"}, "branch": {"type": "string"},
                    "tag": {"type": "string", "nullable": True}, "sync_root": {"type": "string"},
                    "status": {"type": "string", "enum": [st.value for st in Status]},
                    "live_revision": {"type": "string", "nullable": True},
                    "live_commit": {"type": "object", "nullable": True},
                    "last_revision": {"type": "string", "nullable": True},
                    "last_result": {"type": "string", "nullable": True, "enum": [r.value for r in Result]},
                    "last_reason": {"type": "string", "nullable": True, "enum": [r.value for r in Reason],
                                    "description": "Why the last attempt did not end in sync; null when it did"},
                    "last_error": {"type": "string", "nullable": True},
                    "last_attempt_at": {"type": "number", "nullable": True},
                    "last_success_at": {"type": "number", "nullable": True},
                    "consecutive_failures": {"type": "integer"},
                    "suspended": {"type": "boolean"}, "suspended_reason": {"type": "string", "nullable": True},
                    "pinned_revision": {"type": "string", "nullable": True},
                    "interval": {"type": "number"}, "next_poll_at": {"type": "number", "nullable": True},
                    "running": {"type": "string", "nullable": True}, "pending": {"type": "string", "nullable": True},
                    "owner": {"type": "string", "nullable": True,
                              "description": "Replica that reconciles the app; null with a single replica"},
                    "owner_heartbeat_at": {"type": "number", "nullable": True},
                    "rollout": {"type": "object", "nullable": True,
                                "description": "Sync windows and promotion (docs/rollout.md): `summary` (one line), "
                                               "`window`, `held` (revision, reason), `promotion` (the chain)"},
                    "health": {"type": "object", "nullable": True,
                               "description": "Health of the last deployed revision (docs/health.md): revision, "
                                              "state (checking, healthy, degraded), since, checked_at, evidence"},
                },
            },
            "HistoryRow": {
                "type": "object",
                "description": "One sync attempt; a row is written before the target is touched and completed after",
                "properties": {
                    "id": {"type": "integer"}, "app": {"type": "string"},
                    "trigger": {"type": "string", "enum": [t.value for t in Trigger]},
                    "revision": {"type": "string", "nullable": True},
                    "started_at": {"type": "number"}, "finished_at": {"type": "number", "nullable": True},
                    "duration": {"type": "number", "nullable": True, "description": "Seconds"},
                    "result": {"type": "string", "enum": [r.value for r in Result]},
                    "reason": {"type": "string", "nullable": True, "enum": [r.value for r in Reason],
                               "description": "Why the attempt did not end in sync; null when it did"},
                    "summary": {"type": "string"},
                    "diff": {"type": "string", "description": "Readable unified diff of what was applied or planned"},
                    "error": {"type": "string", "nullable": True},
                    "warnings": {"type": "array", "items": {"type": "string"}},
                    "problems": {"type": "array", "items": {"type": "string"},
                                 "description": "Why a commit was refused, each naming its file and entity"},
                    "drift": {"type": "boolean", "description": "The sync reverted a change made on the target"},
                    "details": {"type": "object", "description": "Target-specific facts (replica, attempt, ...)"},
                },
            },
            "Replicas": {
                "type": "object",
                "properties": {
                    "mode": {"type": "string", "enum": ["single", "postgresql"]},
                    "self": {"type": "string"},
                    "healthy": {"type": "boolean", "description": "This replica can prove ownership (may apply)"},
                    "reason": {"type": "string", "nullable": True},
                    "replicas": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "self": {"type": "boolean"}, "live": {"type": "boolean"},
                        "host": {"type": "string", "nullable": True}, "version": {"type": "string", "nullable": True},
                        "started_at": {"type": "number"}, "heartbeat_at": {"type": "number"},
                        "heartbeat_age": {"type": "number"}, "owned_apps": {"type": "integer"},
                        "apps": {"type": "array", "items": {"type": "string"}},
                    }}},
                },
            },
        },
    },
}

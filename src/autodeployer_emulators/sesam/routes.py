"""The Sesam node's HTTP surface: Starlette handlers that translate requests into state calls.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autodeployer_emulators.sesam.state import (
    DEFAULT_GROUP,
    DEFAULT_METADATA,
    MAX_UPLOAD_PART,
    OPEN_PATHS,
    PRIVILEGED_PATH,
    PUMP_OPERATIONS,
    Actor,
    BodyError,
    Checked,
    Kind,
    Posted,
    SesamState,
    Stored,
    dump_json,
    entity_group,
    has_admin,
    jwt_claims,
    jwt_expired,
    make_plan,
    parse_bool_param,
    parse_json_items,
    parse_payload,
    transit_ts,
)


def problem(status: int, detail: str) -> JSONResponse:
    """A small JSON error body for non-validation failures."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status)


def media_type(raw: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (raw or "").split(";")[0].strip().lower()


async def read_upload(request: Request) -> list[Posted]:
    """Read a config upload in any of the three accepted body forms."""
    content_type = media_type(request.headers.get("content-type"))
    if content_type == "multipart/form-data":
        async with request.form(max_part_size=MAX_UPLOAD_PART) as form:
            part = form.get("file")
            if part is None:
                raise BodyError("multipart body has no part named 'file'")
            if isinstance(part, UploadFile):
                data = await part.read()
                part_type = media_type(part.content_type)
            else:
                data, part_type = part.encode("utf-8"), ""
        return parse_payload(data, part_type)
    return parse_payload(await request.body(), content_type)


# --------------------------------------------------------------------------------------------
# Request helpers
# --------------------------------------------------------------------------------------------


def _node_pipe_refusal(entity_id: str) -> JSONResponse:
    """The node's own pipes cannot be changed or removed through the API (emulator's choice)."""
    return problem(403, f"pipe {entity_id!r} belongs to the node and cannot be changed")


def _validation_response(status: int, items: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"validation_errors": items}, status_code=status)


def _body_error_item(msg: str) -> dict[str, Any]:
    """A validation item for a body that did not parse: no ``posted-config``."""
    return {"config-errors": [{"elements": "$", "level": "error", "msg": msg}],
            "is-valid-config": False}


async def _json_body(request: Request) -> Any:
    try:
        return json.loads((await request.body()).decode("utf-8-sig"))
    except ValueError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from exc


def _secret_values(body: Any) -> dict[str, str]:
    """``{name: value}`` or a list of such objects; values must be non-null strings."""
    parts = body if isinstance(body, list) else [body]
    values: dict[str, str] = {}
    for part in parts:
        if not isinstance(part, dict):
            raise BodyError("secrets must be a JSON object {name: value} or a list of them")
        values.update(part)
    bad = sorted(name for name, value in values.items() if not isinstance(value, str))
    if bad:
        raise BodyError(f"secret values must be strings (null is refused): {', '.join(bad)}")
    return values


def _actor(request: Request) -> Actor:
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    return Actor.from_request(token or None, request.client.host if request.client else None)


def _fields_param(raw: str | None) -> set[str] | None:
    if not raw:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _is_privileged(path: str) -> bool:
    """Env and secrets endpoints, which a real node reserves for group:Admin."""
    return PRIVILEGED_PATH.fullmatch(path) is not None


class _ControlMiddleware:
    """Records every request, then applies injected delays and failures, then auth."""

    def __init__(self, app: ASGIApp, emulator: SesamRoutes) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        record, delay, injected = self.emulator._begin(scope["method"], path, query)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        try:
            if delay > 0:
                await asyncio.sleep(delay)
            if injected is not None:
                await problem(injected, "injected failure")(scope, receive, recording_send)
                return
            reason = self.emulator._auth_failure(path, Headers(scope=scope))
            if reason is not None:
                await problem(403, reason)(scope, receive, recording_send)
                return
            await self.app(scope, receive, recording_send)
        except Exception:
            if record.status == 0:
                record.status = 500
            raise


class SesamRoutes(SesamState):
    """The node's request handlers on top of :class:`SesamState`."""

    def _auth_failure(self, path: str, headers: Headers) -> str | None:
        """Why the request must be refused with 403, or ``None`` to let it through."""
        with self._lock:
            expected, expired = self._jwt, self._token_expired
        if expected is None or path in OPEN_PATHS:
            return None
        raw = headers.get("authorization")
        if raw is None:
            return "missing Authorization header"
        scheme, _, token = raw.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or token != expected:
            return "invalid token"
        claims = jwt_claims(token)
        if expired or jwt_expired(claims, time.time()):
            return "token expired"
        if self.require_admin and _is_privileged(path) and not has_admin(claims):
            return "this endpoint needs a token with group:Admin"
        return None

    # ---- node endpoints ------------------------------------------------------------------

    async def _root(self, request: Request) -> Response:
        return JSONResponse({"status": {
            "developer_mode": self.developer_mode,
            "node_version": "emulator",
            "build_info": {"name": "autodeployer sesam emulator"},
        }})

    async def _health(self, request: Request) -> Response:
        uptime = round(time.monotonic() - self._started_monotonic, 3)
        if not self.healthy:
            return JSONResponse({"status": "failed", "node_uptime": uptime}, status_code=503)
        return JSONResponse({"status": "ok", "node_uptime": uptime})

    async def _ping(self, request: Request) -> Response:
        return JSONResponse({"status": "running"})

    async def _status(self, request: Request) -> Response:
        return JSONResponse({
            "node_start_time": transit_ts(self._started_at)[2:],
            "node_version": "emulator",
            "developer_mode": self.developer_mode,
        })

    # ---- whole config ----------------------------------------------------------------------

    async def _config(self, request: Request) -> Response:
        group = request.path_params.get("group", DEFAULT_GROUP)
        if request.method == "GET":
            return self._get_config(request, group)
        return await self._put_config(request, group)

    def _get_config(self, request: Request, group: str) -> Response:
        wants_zip = "application/zip" in request.headers.get("accept", "").lower()
        with self._lock:
            stored = self._group_export(group)
            if wants_zip:
                unknown = ({**self._unknown_files, **self._pinned_unknown}
                           if group == DEFAULT_GROUP else {})
                return Response(self._zip_export(stored, unknown), media_type="application/zip")
            body = dump_json([self._original(s) for s in stored])
        return Response(body, media_type="application/json")

    async def _put_config(self, request: Request, group: str) -> Response:
        try:
            force = parse_bool_param(request.query_params.get("force"), "force")
            items = await read_upload(request)
        except BodyError as exc:
            return _validation_response(400, [_body_error_item(str(exc))])
        actor = _actor(request)
        with self._lock:
            plan = make_plan(items, self._context(force, group))
            if plan.has_errors and not force:
                return _validation_response(400, plan.report)
            self._replace_group(group, plan, actor, self.keep_metadata_on_replace)
            self._mark_deploying()
            return _validation_response(200, plan.report)

    async def _config_all(self, request: Request) -> Response:
        """Every config group at once; entities of other groups name it in ``$config-group``."""
        if request.method == "GET":
            with self._lock:
                stored = sorted([*self._entities.values(), self._metadata],
                                key=lambda s: s.entity_id)
                body = dump_json([self._grouped_original(s) for s in stored])
            return Response(body, media_type="application/json")
        try:
            force = parse_bool_param(request.query_params.get("force"), "force")
            items = await read_upload(request)
        except BodyError as exc:
            return _validation_response(400, [_body_error_item(str(exc))])
        actor = _actor(request)
        with self._lock:
            ctx = self._context(force, DEFAULT_GROUP, frozenset({"pipe", "system", "metadata"}),
                                check_taken=False)
            plan = make_plan(items, ctx)
            if plan.has_errors and not force:
                return _validation_response(400, plan.report)
            self._replace_all(plan, actor)
            self._mark_deploying()
            return _validation_response(200, plan.report)

    async def _config_history(self, request: Request) -> Response:
        """Versions of one entity, oldest first (``reverse=true``: newest first).

        Emulator's shape (the reference names only the parameters): each item is
        ``{"_id", "_updated", "_ts", "_deleted", "config"}``; ``_updated`` is the ``since`` token.
        """
        query = request.query_params
        entity_id = query.get("entity_id")
        if not entity_id:
            return problem(400, "query parameter 'entity_id' is required")
        try:
            reverse = parse_bool_param(query.get("reverse"), "reverse")
            since = int(query["since"]) if query.get("since") else 0
            limit = int(query["limit"]) if query.get("limit") else None
        except (BodyError, ValueError) as exc:
            return problem(400, f"bad query parameter: {exc}")
        with self._lock:
            found = [h for h in self._history if h.entity_id == entity_id and h.seq > since]
        if reverse:
            found.reverse()
        items = [{"_id": h.entity_id, "_updated": h.seq, "_ts": h.ts, "_deleted": h.deleted,
                  "config": h.original} for h in found[:limit]]
        return JSONResponse(items)

    # ---- metadata --------------------------------------------------------------------------

    async def _metadata_endpoint(self, request: Request) -> Response:
        if request.method == "GET":
            with self._lock:
                return JSONResponse(self._metadata_object())
        actor = _actor(request)
        if request.method == "DELETE":
            with self._lock:
                self._set_metadata(dict(DEFAULT_METADATA), [], actor)
                return JSONResponse(self._metadata_object())
        try:
            force = parse_bool_param(request.query_params.get("force"), "force")
            body = await _json_body(request)
        except BodyError as exc:
            return _validation_response(400, [_body_error_item(str(exc))])
        if isinstance(body, dict):
            body = {"_id": "node", "type": "metadata", **body}
        with self._lock:
            plan = make_plan([Posted(body)], self._context(force, DEFAULT_GROUP,
                                                           frozenset({"metadata"}), False))
            if not plan.accepted or (plan.has_errors and not force):
                return _validation_response(400, plan.report)
            self._store(plan.accepted[0], DEFAULT_GROUP, actor)
            return JSONResponse(self._metadata_object())

    # ---- env and secrets -------------------------------------------------------------------

    async def _env_endpoint(self, request: Request) -> Response:
        if request.method != "GET":
            try:
                body = await _json_body(request)
            except BodyError as exc:
                return problem(400, str(exc))
            if not isinstance(body, dict):
                return problem(400, "body must be a JSON object {name: value}")
            with self._lock:
                if request.method == "PUT":
                    self._env = copy.deepcopy(body)
                else:
                    self._env.update(copy.deepcopy(body))
        with self._lock:
            return JSONResponse(copy.deepcopy(self._env))

    async def _env_delete(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self._lock:
            if name not in self._env:
                return problem(404, f"no environment variable {name!r}")
            del self._env[name]
            return JSONResponse(copy.deepcopy(self._env))

    def _secret_store(self, request: Request) -> dict[str, str] | None:
        """The global store, or one system's scoped store; ``None`` when the system is absent."""
        system_id = request.path_params.get("entity_id")
        if system_id is None:
            return self._secrets
        stored = self._entities.get(system_id)
        if stored is None or stored.kind != "system":
            return None
        return self._system_secrets.setdefault(system_id, {})

    async def _secrets_endpoint(self, request: Request) -> Response:
        values: dict[str, str] = {}
        if request.method != "GET":
            try:
                parse_bool_param(request.query_params.get("encrypt", "true"), "encrypt")
                values = _secret_values(await _json_body(request))
            except BodyError as exc:
                return problem(400, str(exc))
        with self._lock:
            store = self._secret_store(request)
            if store is None:
                return problem(404, f"no system {request.path_params['entity_id']!r}")
            if request.method == "PUT":
                store.clear()
            store.update(values)
            return JSONResponse(sorted(store))

    async def _secrets_delete(self, request: Request) -> Response:
        key = request.path_params["key"]
        with self._lock:
            store = self._secret_store(request)
            if store is None or key not in store:
                return problem(404, f"no secret {key!r}")
            del store[key]
            return JSONResponse(sorted(store))

    def _collection_handler(self, kind: Kind) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            if request.method == "GET":
                fields = _fields_param(request.query_params.get("fields"))
                try:
                    internal = parse_bool_param(
                        request.query_params.get(f"include-internal-{kind}s"),
                        f"include-internal-{kind}s")
                except BodyError as exc:
                    return problem(400, str(exc))
                with self._lock:
                    found = self._listed(kind, internal)
                    return JSONResponse([self._object(s, fields) for s in found])
            return await self._create_entities(request, kind)
        return handler

    async def _create_entities(self, request: Request, kind: Kind) -> Response:
        """POST a list of configs: 201 created, 409 if any exists, 400 if invalid."""
        try:
            force = parse_bool_param(request.query_params.get("force"), "force")
            items = parse_json_items(await request.body())
        except BodyError as exc:
            return _validation_response(400, [_body_error_item(str(exc))])
        actor = _actor(request)
        with self._lock:
            plan = make_plan(items, self._context(force, DEFAULT_GROUP, frozenset({kind}), False))
            if (plan.has_errors and not force) or not plan.accepted:
                return _validation_response(400, plan.report)
            existing = sorted(i.entity_id for i in plan.accepted if i.entity_id in self._entities)
            if existing:
                return problem(409, f"already exists: {', '.join(existing)}")
            created = [self._store(item, entity_group(item.entity), actor)
                       for item in plan.accepted]
            self._mark_deploying()
            return JSONResponse([self._object(s) for s in created], status_code=201)

    def _entity_handler(self, kind: Kind) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            entity_id = request.path_params["entity_id"]
            with self._lock:
                stored = self._find(kind, entity_id)
                if stored is None:
                    return problem(404, f"no {kind} {entity_id!r}")
                body = self._object(stored, _fields_param(request.query_params.get("fields")))
                if request.method == "DELETE":
                    if entity_id in self._system_pipes:
                        return _node_pipe_refusal(entity_id)
                    self._remove(entity_id)
                return JSONResponse(body)
        return handler

    def _entity_config_handler(self, kind: Kind) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            entity_id = request.path_params["entity_id"]
            if request.method == "GET":
                with self._lock:
                    stored = self._find(kind, entity_id)
                    if stored is None:
                        return problem(404, f"no {kind} {entity_id!r}")
                    return JSONResponse(self._original(stored))
            return await self._put_entity_config(request, kind, entity_id)
        return handler

    async def _put_entity_config(self, request: Request, kind: Kind, entity_id: str) -> Response:
        """Replace one entity's config; ``_id`` comes from the URL when the body lacks it."""
        try:
            force = parse_bool_param(request.query_params.get("force"), "force")
            body = await _json_body(request)
        except BodyError as exc:
            return _validation_response(400, [_body_error_item(str(exc))])
        actor = _actor(request)
        if isinstance(body, dict):
            body = {"_id": entity_id, **body}
            if body["_id"] != entity_id:
                item = Checked(Posted(body), None)
                item.error("$['_id']", f"'_id' {body['_id']!r} does not match the URL")
                return _validation_response(400, [item.report_item()])
        with self._lock:
            current = self._find(kind, entity_id)
            if current is None:
                return problem(404, f"no {kind} {entity_id!r}")
            if entity_id in self._system_pipes:
                return _node_pipe_refusal(entity_id)
            ctx = self._context(force, current.group, frozenset({kind}), False)
            plan = make_plan([Posted(body)], ctx)
            if (plan.has_errors and not force) or not plan.accepted:
                return _validation_response(400, plan.report)
            stored = self._store(plan.accepted[0], current.group, actor)
            self._mark_deploying()
            return JSONResponse(self._object(stored))

    async def _pump(self, request: Request) -> Response:
        """``GET`` the pump; ``POST`` an operation and answer with the pump as it is after it."""
        entity_id = request.path_params["entity_id"]
        if request.method == "GET":
            with self._lock:
                stored = self._find("pipe", entity_id)
                if stored is None:
                    return problem(404, f"no pipe {entity_id!r}")
                return JSONResponse(self._pump_object(stored))
        async with request.form() as form:
            params = {key: str(value) for key, value in form.items()}
        operation = params.get("operation", "")
        with self._lock:
            stored = self._find("pipe", entity_id)
            if stored is None:
                return problem(404, f"no pipe {entity_id!r}")
            if operation not in PUMP_OPERATIONS:
                # sesamclient recognises this wording (PumpDoesNotSupportTheOperation).
                return problem(400, f"The pump 'pump:{entity_id}' doesn't support the "
                                    f"operation '{operation}'")
            self._pump_operation(stored, operation, params)
            self._pump_log.append((entity_id, operation))
            return JSONResponse(self._pump_object(stored))

    def _pump_operation(self, stored: Stored, operation: str, params: Mapping[str, str]) -> None:
        pump = stored.pump
        assert pump is not None
        if operation in ("enable", "disable"):
            stored.disabled = operation == "disable"
        elif operation in ("start", "pump", "start-rescan"):
            self._run_pump(stored)
        elif operation in ("reset-tracking", "set-tracking-to-start", "reset"):
            pump.last_seen = None
        elif operation == "update-last-seen":
            pump.last_seen = params.get("last-seen") or None
        elif operation == "set-last-seen-to-end":
            pump.last_seen = str(pump.processed)
        elif operation == "reset-failures":
            pump.last_error = None

    async def _system_status(self, request: Request) -> Response:
        entity_id = request.path_params["entity_id"]
        with self._lock:
            stored = self._find("system", entity_id)
            if stored is None:
                return problem(404, f"no system {entity_id!r}")
            deploying = time.monotonic() < self._deploying_until
            running = stored.entity.get("type") == "system:microservice" and not deploying
            return JSONResponse({"_id": entity_id, "running": running})

    async def _system_logs(self, request: Request) -> Response:
        entity_id = request.path_params["entity_id"]
        with self._lock:
            if self._find("system", entity_id) is None:
                return problem(404, f"no system {entity_id!r}")
        return PlainTextResponse(f"{transit_ts(self._clock())[2:]} emulator: no logs\n")

    async def _system_reload(self, request: Request) -> Response:
        entity_id = request.path_params["entity_id"]
        with self._lock:
            if self._find("system", entity_id) is None:
                return problem(404, f"no system {entity_id!r}")
        return JSONResponse({"_id": entity_id, "reload": "accepted"}, status_code=202)


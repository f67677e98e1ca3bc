"""Marathon's HTTP surface: request handlers that translate requests into state calls.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hmac
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from autodeployer_emulators.marathon.state import (
    ADMIN_ROUTER_PREFIX,
    CONTROL_PREFIX,
    ID_PATTERN_MESSAGE,
    LOGIN_PATH,
    ApiError,
    MarathonState,
    RequestRecord,
    _Change,
    _clean,
    _config,
    _Deployment,
    _detail,
    _embeds,
    _GroupRecord,
    _invalid_json,
    _is_under,
    _not_found,
    _not_valid,
    _parent,
    _parse_json,
    _require_object,
    _semantic_errors,
    _steps_json,
    _truthy,
    _type_errors,
    _with_defaults,
    canonical_id,
    parse_label_selector,
)


def _json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


# --------------------------------------------------------------------------------------------
# Helpers used by the handlers
# --------------------------------------------------------------------------------------------


def _force(request: Request) -> bool:
    return _truthy(request.query_params.get("force"))


def _deployment_result(
    status: int, deployment: _Deployment, headers: Mapping[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    return (
        status,
        {"deploymentId": deployment.id, "version": deployment.version},
        {**(headers or {}), "Marathon-Deployment-Id": deployment.id},
    )


def _snapshot_json(group_id: str, snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A stored group version rendered like ``GET /v2/groups/{id}``."""

    def render(gid: str) -> dict[str, Any]:
        record: _GroupRecord = snapshot["groups"][gid]
        return {
            "id": gid,
            "dependencies": list(record.dependencies),
            "version": record.version,
            "apps": [
                copy.deepcopy(snapshot["apps"][a])
                for a in sorted(snapshot["apps"])
                if _parent(a) == gid
            ],
            "groups": [
                render(g)
                for g in sorted(snapshot["groups"])
                if g != "/" and g != gid and _parent(g) == gid
            ],
        }

    return render(group_id)


class MarathonRoutes(MarathonState):
    """Marathon's request handlers on top of :class:`MarathonState`."""

    # ---------------------------------------------------------------- HTTP plumbing

    async def _endpoint(self, request: Request) -> Response:
        path = request.url.path
        mount = ""
        if path == ADMIN_ROUTER_PREFIX or path.startswith(ADMIN_ROUTER_PREFIX + "/"):
            mount, path = ADMIN_ROUTER_PREFIX, path[len(ADMIN_ROUTER_PREFIX) :] or "/"
        raw = await request.body()
        authorization = request.headers.get("authorization", "")
        if path.startswith(CONTROL_PREFIX):
            return self._control_endpoint(request, path, raw, authorization)
        delay = self._take_delay(path)
        if delay:
            await asyncio.sleep(delay)
        base_url = str(request.base_url).rstrip("/") + mount
        with self._lock:
            failure = self._take_failure(path)
        if failure is not None:
            response = _json_response(failure, {"message": f"Injected failure ({failure})"})
        elif path == "/v2/events" and request.method == "GET":
            response = self._guard(authorization) or self._event_stream(request)
        else:
            response = self._dispatch(request, path, raw, authorization, base_url)
        self._log(request, path, raw, response.status_code)
        return response

    def _guard(self, authorization: str) -> Response | None:
        with self._lock:
            error = self._unauthorized(authorization)
        return None if error is None else _json_response(error.status, error.body, error.headers)

    def _dispatch(
        self, request: Request, path: str, raw: bytes, authorization: str, base_url: str
    ) -> Response:
        try:
            with self._lock:
                self._tick()
                open_path = path in ("/ping", LOGIN_PATH)
                if not open_path and (error := self._unauthorized(authorization)) is not None:
                    raise error
                status, body, headers = self._route(request, path, raw, base_url)
        except ApiError as error:
            return _json_response(error.status, error.body, error.headers)
        headers = {"X-Marathon-Leader": f"http://{request.url.netloc}", **headers}
        if isinstance(body, str):
            return Response(body, status_code=status, media_type="text/plain", headers=headers)
        if body is None:
            return Response(b"", status_code=status, headers=headers)
        return _json_response(status, body, headers)

    def _log(self, request: Request, path: str, raw: bytes, status: int) -> None:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                body = raw.decode("utf-8", "replace")
        if path == LOGIN_PATH and isinstance(body, dict) and "password" in body:
            body = {**body, "password": "***"}
        query = {k: ",".join(request.query_params.getlist(k)) for k in request.query_params}
        with self._lock:
            self._requests.append(RequestRecord(request.method, path, query, body, status))

    def _route(
        self, request: Request, path: str, raw: bytes, base_url: str
    ) -> tuple[int, Any, dict[str, str]]:
        method = request.method
        if path == "/ping" and method == "GET":
            return 200, "pong", {}
        if path == LOGIN_PATH and method == "POST":
            return self._login(raw)
        if path == "/v2/info" and method == "GET":
            return 200, self._info(request), {}
        if path == "/v2/leader" and method == "GET":
            return 200, {"leader": request.url.netloc}, {}
        if path == "/v2/apps" or path.startswith("/v2/apps/"):
            return self._route_apps(request, path[len("/v2/apps") :], raw, base_url)
        if path == "/v2/groups" or path.startswith("/v2/groups/"):
            return self._route_groups(request, path[len("/v2/groups") :], raw, base_url)
        if path == "/v2/tasks" and method == "GET":
            return 200, {"tasks": self._all_tasks(request)}, {}
        if path == "/v2/deployments" and method == "GET":
            now = time.monotonic()
            return 200, [self._deployment_json(d, now) for d in self._running], {}
        if path.startswith("/v2/deployments/") and method == "DELETE":
            return self._delete_deployment(path[len("/v2/deployments/") :], request)
        raise _not_found(f"The requested resource {method} {path} is not served by this emulator")

    # ---------------------------------------------------------------- /v2/info, login, events

    def _info(self, request: Request) -> dict[str, Any]:
        host = request.url.hostname or "127.0.0.1"
        port = request.url.port or 80
        return {
            "name": "marathon",
            "version": self.marathon_version,
            "buildref": "emulator",
            "elected": True,
            "leader": f"{host}:{port}",
            "frameworkId": self._framework_id,
            # As Marathon 1.x: the ports live only in http_config; marathon_config holds the
            # Mesos-facing options.
            "marathon_config": {
                "master": "zk://127.0.0.1:2181/mesos",
                "hostname": host,
                "mesos_role": None,
                "mesos_user": "root",
                "framework_name": "marathon",
                "ha": True,
                "checkpoint": True,
                "failover_timeout": 604800,
                "task_launch_timeout": 300000,
                "features": [],
            },
            "zookeeper_config": {
                "zk": "zk://127.0.0.1:2181/marathon",
                "zk_max_versions": self.max_versions,
            },
            "http_config": {"http_port": port, "https_port": 8443},
            "event_subscriber": None,
        }

    def _login(self, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        body = _require_object(_parse_json(raw))
        uid, password = body.get("uid"), body.get("password")
        expected = self._users.get(uid) if isinstance(uid, str) else None
        if (
            expected is None
            or not isinstance(password, str)
            or not hmac.compare_digest(password.encode(), expected.encode())
        ):
            raise ApiError(
                401,
                {
                    "title": "Bad credentials",
                    "description": "Bad credentials",
                    "code": "ERR_INVALID_CREDENTIALS",
                    "message": "Bad credentials",
                },
                {"WWW-Authenticate": "acsjwt"},
            )
        return 200, {"token": self._issue_token(str(uid), self._token_ttl)}, {}

    def _event_stream(self, request: Request) -> Response:
        wanted = set(request.query_params.getlist("event_type"))

        async def stream() -> AsyncIterator[bytes]:
            with self._lock:
                position = len(self._events)
            attached = {
                "eventType": "event_stream_attached",
                "remoteAddress": request.client.host if request.client else "",
            }
            yield f"event: event_stream_attached\ndata: {json.dumps(attached)}\n\n".encode()
            while not self._closing.is_set():
                with self._lock:
                    self._tick()
                    fresh = self._events[position:]
                    position += len(fresh)
                for event in fresh:
                    if not wanted or event["eventType"] in wanted:
                        yield f"event: {event['eventType']}\ndata: {json.dumps(event)}\n\n".encode()
                await asyncio.sleep(0.05)

        return StreamingResponse(stream(), media_type="text/event-stream")

    # ---------------------------------------------------------------- apps

    def _route_apps(
        self, request: Request, rest: str, raw: bytes, base_url: str
    ) -> tuple[int, Any, dict[str, str]]:
        method = request.method
        if rest in ("", "/"):
            if method == "GET":
                return 200, {"apps": self._list_apps(request)}, {}
            if method == "POST":
                return self._create_app(request, raw, base_url)
            if method in ("PUT", "PATCH"):
                return self._put_apps(request, raw)
            raise ApiError(405, {"message": f"{method} /v2/apps is not supported by this emulator"})
        if method == "GET" and (m := re.fullmatch(r"(/.+)/versions/([^/]+)", rest)):
            app_id = self._existing_app_id(m.group(1))
            stored = self._versions.get(app_id, {}).get(m.group(2))
            if stored is None:
                raise _not_found(f"App '{app_id}' does not exist in version {m.group(2)}")
            return 200, copy.deepcopy(stored), {}
        if method == "GET" and rest.endswith("/versions"):
            app_id = self._existing_app_id(rest[: -len("/versions")])
            return 200, {"versions": sorted(self._versions.get(app_id, {}), reverse=True)}, {}
        if method == "GET" and rest.endswith("/tasks"):
            app_id = self._existing_app_id(rest[: -len("/tasks")])
            return 200, {"tasks": self._tasks(app_id)}, {}
        if method == "POST" and rest.endswith("/restart"):
            return self._restart_app(request, rest[: -len("/restart")])
        if method == "DELETE" and (m := re.fullmatch(r"(/.+)/tasks(?:/([^/]+))?", rest)):
            return self._kill_tasks(request, m.group(1), m.group(2))
        if method == "GET":
            app_id = self._existing_app_id(rest)
            # Marathon embeds the tasks and the last task failure of a single app by default.
            embeds = _embeds(request) | {"app.tasks", "app.lastTaskFailure"}
            return 200, {"app": self._app_json(app_id, embeds)}, {}
        if method in ("PUT", "PATCH"):
            return self._put_app(request, rest, raw, base_url, patch=method == "PATCH")
        if method == "DELETE":
            app_id = self._existing_app_id(rest)
            deployment = self._commit(_Change(apps={app_id: None}), force=_force(request))
            return _deployment_result(200, deployment)
        raise ApiError(405, {"message": f"{method} is not supported on /v2/apps{rest}"})

    def _existing_app_id(self, raw_id: str) -> str:
        app_id = canonical_id(raw_id)
        if app_id is None or app_id not in self._apps:
            raise _not_found(f"App '{app_id or raw_id}' does not exist")
        return app_id

    def _list_apps(self, request: Request) -> list[dict[str, Any]]:
        params = request.query_params
        selector: Callable[[Mapping[str, str]], bool] | None = None
        if params.get("label"):
            try:
                selector = parse_label_selector(params["label"])
            except ValueError as exc:
                raise ApiError(400, {"message": str(exc)}) from exc
        id_filter, cmd_filter = params.get("id"), params.get("cmd")
        embeds = _embeds(request)
        out = []
        for app_id in sorted(self._apps):
            app = self._apps[app_id]
            if id_filter and id_filter not in app_id:
                continue
            if cmd_filter and cmd_filter not in (app.get("cmd") or ""):
                continue
            if selector is not None and not selector(app.get("labels") or {}):
                continue
            out.append(self._app_json(app_id, embeds))
        return out

    def _validated_app(self, body: dict[str, Any], app_id: str, prefix: str = "") -> dict[str, Any]:
        """Full stored form of a body whose id is already resolved; 400/422 on invalid content."""
        if errors := _type_errors(body, prefix):
            raise _invalid_json(errors)
        app = _with_defaults({**_clean(body), "id": app_id})
        if errors := _semantic_errors(app, prefix):
            raise _not_valid(errors)
        return app

    def _resolve_body_id(self, body: Mapping[str, Any], base: str, prefix: str = "") -> str:
        raw_id = body.get("id")
        if raw_id is None or raw_id == "":
            raise _not_valid([_detail(f"{prefix}/id", "must not be empty")])
        if not isinstance(raw_id, str):
            raise _invalid_json([_detail(f"{prefix}/id", "error.expected.jsstring")])
        app_id = canonical_id(raw_id, base)
        if app_id is None or app_id == "/":
            raise _not_valid([_detail(f"{prefix}/id", ID_PATTERN_MESSAGE)])
        return app_id

    def _create_app(
        self, request: Request, raw: bytes, base_url: str
    ) -> tuple[int, Any, dict[str, str]]:
        body = _require_object(_parse_json(raw))
        app_id = self._resolve_body_id(body, "/")
        if errors := _type_errors(body, ""):
            raise _invalid_json(errors)
        if app_id in self._apps:
            raise ApiError(409, {"message": f"An app with id [{app_id}] already exists."})
        app = self._validated_app(body, app_id)
        deployment = self._commit(_Change(apps={app_id: app}), force=_force(request))
        headers = {
            "Location": f"{base_url}/v2/apps{app_id}",
            "Marathon-Deployment-Id": deployment.id,
        }
        return 201, self._app_json(app_id, set()), headers

    def _path_app_id(self, rest: str) -> str:
        app_id = canonical_id(rest)
        if app_id is None or app_id == "/":
            raise _not_valid([_detail("/id", ID_PATTERN_MESSAGE)])
        return app_id

    def _put_app(
        self, request: Request, rest: str, raw: bytes, base_url: str, *, patch: bool
    ) -> tuple[int, Any, dict[str, str]]:
        app_id = self._path_app_id(rest)
        body = _require_object(_parse_json(raw))
        if errors := _type_errors(body, ""):
            raise _invalid_json(errors)
        if "id" in body and self._resolve_body_id(body, _parent(app_id)) != app_id:
            raise _not_valid(
                [_detail("/id", f"The id in the body must match the path id {app_id}")]
            )
        old = self._apps.get(app_id)
        force = _force(request)
        if body.get("version") is not None:
            if set(body) - {"id", "version"}:
                raise _not_valid(
                    [_detail("/", "The 'version' field may only be combined with the 'id' field.")]
                )
            if old is None:
                raise _not_found(f"App '{app_id}' does not exist")
            stored = self._versions.get(app_id, {}).get(body["version"])
            if stored is None:
                raise _not_found(f"App '{app_id}' does not exist in version {body['version']}")
            deployment = self._commit(_Change(apps={app_id: _config(stored)}), force=force)
            return _deployment_result(200, deployment)
        if old is None and patch:
            raise _not_found(f"App '{app_id}' does not exist")
        partial = (
            patch or request.query_params.get("partialUpdate", "true").strip().lower() != "false"
        )
        merged = {**_config(old), **_clean(body)} if (old is not None and partial) else body
        app = self._validated_app(merged, app_id)
        deployment = self._commit(_Change(apps={app_id: app}), force=force)
        if old is None:
            return _deployment_result(201, deployment, {"Location": f"{base_url}/v2/apps{app_id}"})
        return _deployment_result(200, deployment)

    def _put_apps(self, request: Request, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        """``PUT /v2/apps``: create or update several apps in one deployment (partial update
        by default)."""
        body = _parse_json(raw)
        if not isinstance(body, list):
            raise _invalid_json([_detail("/", "error.expected.jsarray")])
        partial = request.query_params.get("partialUpdate", "true").strip().lower() != "false"
        change = _Change()
        for index, item in enumerate(body):
            prefix = f"/({index})"
            spec = _require_object(item, prefix)
            app_id = self._resolve_body_id(spec, "/", prefix)
            if errors := _type_errors(spec, prefix):
                raise _invalid_json(errors)
            old = self._apps.get(app_id)
            merged = {**_config(old), **_clean(spec)} if (old is not None and partial) else spec
            change.apps[app_id] = self._validated_app(merged, app_id, prefix)
        return _deployment_result(200, self._commit(change, force=_force(request)))

    def _all_tasks(self, request: Request) -> list[dict[str, Any]]:
        """``GET /v2/tasks[?status=running|staging]``: every app's tasks (all running here)."""
        status = request.query_params.get("status")
        if status not in (None, "", "running"):
            return []
        return [task for app_id in sorted(self._apps) for task in self._tasks(app_id)]

    def _kill_tasks(
        self, request: Request, raw_id: str, task_id: str | None
    ) -> tuple[int, Any, dict[str, str]]:
        """``DELETE /v2/apps/{id}/tasks[/{task}][?scale=&host=]``.

        Without ``scale`` the killed tasks are replaced at once by new ones (new ids); with
        ``scale=true`` the app's ``instances`` drops by the number killed, as a deployment.
        """
        app_id = self._existing_app_id(raw_id)
        host = request.query_params.get("host")
        tasks = self._tasks(app_id)
        if task_id is not None:
            tasks = [t for t in tasks if t["id"] == task_id]
            if not tasks:
                raise _not_found(f"Task '{task_id}' does not exist")
        elif host:
            tasks = [t for t in tasks if t["host"] == host]
        if _truthy(request.query_params.get("scale")):
            app = _config(self._apps[app_id])
            app["instances"] = max(0, app["instances"] - len(tasks))
            change = _Change(apps={app_id: self._validated_app(app, app_id)})
            return _deployment_result(200, self._commit(change, force=_force(request)))
        runtime = self._runtime[app_id]
        all_ids = [t["id"] for t in self._tasks(app_id)]
        for task in tasks:
            index = all_ids.index(task["id"])
            runtime.incarnations[index] = runtime.incarnations.get(index, 0) + 1
        killed = [{**t, "state": "TASK_KILLED"} for t in tasks]
        if task_id is not None:
            return 200, {"task": killed[0]}, {}
        return 200, {"tasks": killed}, {}

    def _restart_app(self, request: Request, rest: str) -> tuple[int, Any, dict[str, str]]:
        app_id = self._existing_app_id(rest)
        change = _Change(
            apps={app_id: _config(self._apps[app_id])}, actions={app_id: "RestartApplication"}
        )
        return _deployment_result(200, self._commit(change, force=_force(request)))

    # ---------------------------------------------------------------- groups

    def _route_groups(
        self, request: Request, rest: str, raw: bytes, base_url: str
    ) -> tuple[int, Any, dict[str, str]]:
        method = request.method
        if method == "GET" and (m := re.fullmatch(r"(/.*)?/versions/([^/]+)", rest)):
            group_id = self._existing_group_id(m.group(1) or "/")
            snapshot = self._group_versions.get(group_id, {}).get(m.group(2))
            if snapshot is None:
                raise _not_found(f"Group '{group_id}' does not exist in version {m.group(2)}")
            return 200, _snapshot_json(group_id, snapshot), {}
        if method == "GET" and (rest.endswith("/versions")):
            group_id = self._existing_group_id(rest[: -len("/versions")] or "/")
            return 200, sorted(self._group_versions.get(group_id, {}), reverse=True), {}
        if method == "GET":
            group_id = self._existing_group_id(rest or "/")
            return 200, self._group_json(group_id, _embeds(request)), {}
        if method == "POST":
            return self._create_group(request, rest or "/", raw, base_url)
        if method in ("PUT", "PATCH"):
            return self._put_group(request, rest or "/", raw)
        if method == "DELETE":
            group_id = self._existing_group_id(rest or "/")
            change = _Change(apps={a: None for a in self._apps if _is_under(a, group_id)})
            if group_id == "/":
                change.groups = {g: None for g in self._groups if g != "/" and _parent(g) == "/"}
            else:
                change.groups = {group_id: None}
            deployment = self._commit(change, force=_force(request))
            self._emit("group_change_success", groupId=group_id, version=deployment.version)
            return _deployment_result(200, deployment)
        raise ApiError(405, {"message": f"{method} is not supported on /v2/groups{rest}"})

    def _existing_group_id(self, raw_id: str) -> str:
        group_id = canonical_id(raw_id)
        if group_id is None or group_id not in self._groups:
            raise _not_found(f"Group '{group_id or raw_id}' does not exist")
        return group_id

    def _create_group(
        self, request: Request, rest: str, raw: bytes, base_url: str
    ) -> tuple[int, Any, dict[str, str]]:
        base = canonical_id(rest)
        if base is None:
            raise _not_valid([_detail("/id", ID_PATTERN_MESSAGE)])
        body = _require_object(_parse_json(raw))
        if body.get("id") in (None, ""):
            if base == "/":
                raise _not_valid([_detail("/id", "must not be empty")])
            group_id = base
        else:
            group_id = self._resolve_body_id(body, base)
        if group_id in self._groups:
            raise ApiError(
                409,
                {"message": f"Group {group_id} is already created. Use PUT to change this group."},
            )
        spec = self._parse_group(body, group_id)
        change = self._group_change(spec, group_id, replace_missing=True)
        deployment = self._commit(change, force=_force(request))
        self._emit("group_change_success", groupId=group_id, version=deployment.version)
        headers = {"Location": f"{base_url}/v2/groups{group_id}"}
        return _deployment_result(201, deployment, headers)

    def _put_group(
        self, request: Request, rest: str, raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        group_id = canonical_id(rest)
        if group_id is None:
            raise _not_valid([_detail("/id", ID_PATTERN_MESSAGE)])
        body = _require_object(_parse_json(raw))
        if (
            body.get("id") not in (None, "")
            and self._resolve_group_body_id(body, group_id) != group_id
        ):
            raise _not_valid(
                [_detail("/id", f"The id in the body must match the path id {group_id}")]
            )
        force = _force(request)
        if body.get("version") is not None:
            change = self._group_rollback(group_id, str(body["version"]))
        elif body.get("scaleBy") is not None:
            change = self._group_scale(group_id, body["scaleBy"])
        else:
            change = self._group_change(
                self._parse_group(body, group_id), group_id, replace_missing=False
            )
        if _truthy(request.query_params.get("dryRun")):
            self._check_paths(change)
            return 200, {"steps": _steps_json(self._plan(change))}, {}
        deployment = self._commit(change, force=force)
        self._emit("group_change_success", groupId=group_id, version=deployment.version)
        return _deployment_result(200, deployment)

    def _resolve_group_body_id(self, body: Mapping[str, Any], group_id: str) -> str:
        raw_id = body["id"]
        if not isinstance(raw_id, str):
            raise _invalid_json([_detail("/id", "error.expected.jsstring")])
        resolved = canonical_id(raw_id, _parent(group_id))
        if resolved is None:
            raise _not_valid([_detail("/id", ID_PATTERN_MESSAGE)])
        return resolved

    def _parse_group(
        self, body: Mapping[str, Any], group_id: str, prefix: str = ""
    ) -> dict[str, Any]:
        """Validate a group body into ``{id, dependencies, apps|None, groups|None}`` (absolute ids).

        Collects every 400 type error first, then every 422 error, across the whole tree.
        """
        type_errors: list[dict[str, Any]] = []
        semantic: list[dict[str, Any]] = []
        spec = self._parse_group_node(body, group_id, prefix, type_errors, semantic)
        if type_errors:
            raise _invalid_json(type_errors)
        if semantic:
            raise _not_valid(semantic)
        return spec

    def _parse_group_node(
        self,
        body: Mapping[str, Any],
        group_id: str,
        prefix: str,
        type_errors: list[dict[str, Any]],
        semantic: list[dict[str, Any]],
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"id": group_id, "dependencies": None, "apps": None, "groups": None}
        deps = body.get("dependencies")
        if deps is not None:
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                type_errors.append(_detail(f"{prefix}/dependencies", "error.expected.jsarray"))
            else:
                spec["dependencies"] = list(deps)
        for key in ("apps", "groups"):
            items = body.get(key)
            if items is None:
                continue
            if not isinstance(items, list):
                type_errors.append(_detail(f"{prefix}/{key}", "error.expected.jsarray"))
                continue
            spec[key] = {} if key == "apps" else []
            for index, item in enumerate(items):
                path = f"{prefix}/{key}({index})"
                if not isinstance(item, dict):
                    type_errors.append(_detail(path, "error.expected.jsobject"))
                    continue
                child_id = self._child_id(item, group_id, path, type_errors, semantic)
                if child_id is None:
                    continue
                if key == "apps":
                    if errors := _type_errors(item, path):
                        type_errors.extend(errors)
                        continue
                    app = _with_defaults({**_clean(item), "id": child_id})
                    semantic.extend(_semantic_errors(app, path))
                    spec["apps"][child_id] = app
                else:
                    spec["groups"].append(
                        self._parse_group_node(item, child_id, path, type_errors, semantic)
                    )
        return spec

    @staticmethod
    def _child_id(
        item: Mapping[str, Any],
        group_id: str,
        path: str,
        type_errors: list[dict[str, Any]],
        semantic: list[dict[str, Any]],
    ) -> str | None:
        """Absolute id of a group member, which must lie under the group."""
        raw_id = item.get("id")
        if not isinstance(raw_id, str):
            if raw_id is None:
                semantic.append(_detail(f"{path}/id", "must not be empty"))
            else:
                type_errors.append(_detail(f"{path}/id", "error.expected.jsstring"))
            return None
        child_id = canonical_id(raw_id, group_id)
        if child_id is None or child_id == "/":
            semantic.append(_detail(f"{path}/id", ID_PATTERN_MESSAGE))
            return None
        if not _is_under(child_id, group_id):
            semantic.append(
                _detail(
                    f"{path}/id",
                    f"identifier {child_id} is not child of {group_id}. Hint: use relative paths.",
                )
            )
            return None
        return child_id

    def _group_change(
        self, spec: dict[str, Any], group_id: str, *, replace_missing: bool
    ) -> _Change:
        """Target state for a group subtree: listed apps/groups replace, missing lists keep (PUT).

        Apps under the group that the body leaves out of a given ``apps`` list are removed.
        """
        apps: dict[str, dict[str, Any]] = {}
        groups: dict[str, _GroupRecord] = {}
        self._flatten(spec, apps, groups, replace_missing)
        change = _Change()
        current_apps = {a for a in self._apps if _is_under(a, group_id)}
        for app_id in sorted(current_apps | set(apps)):
            target = apps.get(app_id)
            current = self._apps.get(app_id)
            if target is None:
                change.apps[app_id] = None
            elif current is None or _config(current) != _config(target):
                change.apps[app_id] = _config(target)
        current_groups = {g for g in self._groups if g == group_id or _is_under(g, group_id)}
        for gid in sorted(current_groups - set(groups), key=len):
            if not any(_is_under(gid, removed) for removed in change.groups):
                change.groups[gid] = None
        for gid, record in groups.items():
            existing = self._groups.get(gid)
            if existing is None or existing.dependencies != record.dependencies:
                change.groups[gid] = record
        return change

    def _flatten(
        self,
        spec: dict[str, Any],
        apps: dict[str, dict[str, Any]],
        groups: dict[str, _GroupRecord],
        replace_missing: bool,
    ) -> None:
        group_id = spec["id"]
        existing = self._groups.get(group_id)
        deps = spec["dependencies"]
        if deps is None:
            deps = list(existing.dependencies) if existing and not replace_missing else []
        groups[group_id] = _GroupRecord(group_id, existing.version if existing else "", deps)
        if spec["apps"] is not None:
            apps.update(spec["apps"])
        elif not replace_missing:
            apps.update({a: self._apps[a] for a in self._apps if _parent(a) == group_id})
        if spec["groups"] is not None:
            for child in spec["groups"]:
                self._flatten(child, apps, groups, replace_missing)
        elif not replace_missing:
            subtree = self._subtree(group_id)
            apps.update({a: v for a, v in subtree["apps"].items() if _parent(a) != group_id})
            groups.update({g: r for g, r in subtree["groups"].items() if g != group_id})

    def _group_rollback(self, group_id: str, version: str) -> _Change:
        existing = self._existing_group_id(group_id)
        snapshot = self._group_versions.get(existing, {}).get(version)
        if snapshot is None:
            raise _not_found(f"Group '{existing}' does not exist in version {version}")
        change = _Change()
        for app_id in sorted(
            set(snapshot["apps"]) | {a for a in self._apps if _is_under(a, existing)}
        ):
            target = snapshot["apps"].get(app_id)
            if target != self._apps.get(app_id):
                change.apps[app_id] = copy.deepcopy(target)
        current_groups = {g for g in self._groups if g == existing or _is_under(g, existing)}
        for gid in sorted(current_groups - set(snapshot["groups"]), key=len):
            if not any(_is_under(gid, removed) for removed in change.groups):
                change.groups[gid] = None
        for gid, record in snapshot["groups"].items():
            if gid != "/":
                change.groups[gid] = copy.deepcopy(record)
        return change

    def _group_scale(self, group_id: str, factor: Any) -> _Change:
        existing = self._existing_group_id(group_id)
        if not isinstance(factor, (int, float)) or isinstance(factor, bool):
            raise _invalid_json([_detail("/scaleBy", "error.expected.jsnumber")])
        if factor < 0:
            raise _not_valid([_detail("/scaleBy", f"got {factor}, expected 0.0 or more")])
        change = _Change()
        for app_id in sorted(a for a in self._apps if _is_under(a, existing)):
            app = _config(self._apps[app_id])
            app["instances"] = math.ceil(app["instances"] * factor)
            change.apps[app_id] = app
        return change

    # ---------------------------------------------------------------- deployments endpoint

    def _delete_deployment(
        self, deployment_id: str, request: Request
    ) -> tuple[int, Any, dict[str, str]]:
        deployment = next((d for d in self._running if d.id == deployment_id), None)
        if deployment is None:
            raise _not_found(f"DeploymentPlan {deployment_id} does not exist")
        self._cancel(deployment, reason="cancelled via DELETE /v2/deployments")
        if _truthy(request.query_params.get("force")):
            return 202, None, {}
        rollback = self._commit(self._rollback_change(deployment), force=True)
        return _deployment_result(200, rollback)

    # ---------------------------------------------------------------- control endpoints

    def _control_endpoint(
        self, request: Request, path: str, raw: bytes, authorization: str
    ) -> Response:
        """Stand-alone steering for ``python -m``: the in-process methods, over HTTP."""
        if (denied := self._guard(authorization)) is not None:
            return denied
        action = path[len(CONTROL_PREFIX) :].strip("/")
        try:
            args = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _json_response(400, {"message": "Invalid JSON"})
        getters: dict[str, Callable[[], Any]] = {
            "requests": lambda: [dataclasses.asdict(r) for r in self.requests],
            "events": lambda: self.events,
            "deployments": self.deployments,
            "apps": self.apps,
        }
        actions: dict[str, Callable[..., Any]] = {
            "fail_next_deployment": self.fail_next_deployment,
            "hang_next_deployment": self.hang_next_deployment,
            "make_unhealthy": self.make_unhealthy,
            "make_healthy": self.make_healthy,
            "fail_next": self.fail_next,
            "set_delay": self.set_delay,
            "start_foreign_deployment": self.start_foreign_deployment,
            "load_app": lambda **spec: self.load_app(spec),
            "reset_log": self.reset_log,
        }
        try:
            if request.method == "GET" and action in getters:
                return _json_response(200, getters[action]())
            if request.method == "POST" and action in actions and isinstance(args, dict):
                return _json_response(200, {"result": actions[action](**args)})
        except (TypeError, ValueError) as exc:
            return _json_response(400, {"message": str(exc)})
        return _json_response(404, {"message": f"unknown control {request.method} {path}"})


"""A faithful emulator of the Marathon REST API (the subset a Git-driven deployer needs).

Marathon cannot run in tests, so the deployer talks real HTTP to this emulator instead. It follows
``/work/shared/reference/marathon-api.md``: apps, groups, deployments that take time and lock apps,
both kinds of 409, 400/404/422 error shapes, id rules, server-side defaults, DC/OS token auth and a
login endpoint. Tests keep an in-process handle (:class:`MarathonEmulator`) to seed state, inject
failures and read the request log; the same controls exist over HTTP under ``/_emulator/`` for the
stand-alone server (``python -m autodeployer_emulators.marathon --port N``). Beyond the reference
it serves what marathon-python 0.13 reads: ``/v2/tasks``, task kills, ``PUT /v2/apps``, health-check
results and ``lastTaskFailure``, with health switches in the app spec's ``env``
(``docs/emulators.md``).

Deployments are timed lazily: each one carries a start timestamp and is finished by whichever
request (or inspection call) first sees that its duration has passed: nothing blocks the event
loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import dataclasses
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from autodeployer_emulators._server import (
    LoopbackServer,
    serve_forever,
    standalone_parser,
    token_from_env,
)

__all__ = [
    "ID_PATTERN_MESSAGE",
    "MarathonEmulator",
    "MarathonServer",
    "RequestRecord",
    "canonical_id",
    "default_app_fields",
    "main",
    "parse_label_selector",
]

#: Admin Router mounts Marathon here on DC/OS; the emulator answers under both roots.
ADMIN_ROUTER_PREFIX = "/service/marathon"
LOGIN_PATH = "/acs/api/v1/auth/login"
CONTROL_PREFIX = "/_emulator/"
#: Environment variables of an app spec that switch the emulated tasks' health, so a test can
#: deploy an app that goes bad through the same API (and Git spec) a real cluster is fed with:
#: ``"1"`` makes every task fail its health checks; ``"1"`` on the second makes the app's
#: deployments fail (tasks crash, ``lastTaskFailure`` is set, ``deployment_failed`` is emitted).
UNHEALTHY_ENV = "AUTODEPLOYER_EMULATOR_UNHEALTHY"
FAIL_ENV = "AUTODEPLOYER_EMULATOR_FAIL"
#: DC/OS 1.7 tokens expire after 5 days.
DEFAULT_TOKEN_TTL = 5 * 24 * 3600.0
#: The default superuser of a DC/OS development cluster; override with ``users=``.
DEFAULT_USERS = (("bootstrapuser", "deleteme"),)

ID_PATTERN_MESSAGE = (
    "must fully match regular expression "
    "'^(([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])\\.)*([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])"
    "|(\\.|\\.\\.)$'"
)
_SEGMENT_RE = re.compile(
    r"(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])"
)
#: Fields Marathon computes itself; they are ignored when a client sends them back.
_RUNTIME_FIELDS = frozenset(
    {
        "version",
        "versionInfo",
        "tasksStaged",
        "tasksRunning",
        "tasksHealthy",
        "tasksUnhealthy",
        "deployments",
        "tasks",
        "lastTaskFailure",
        "readinessCheckResults",
        "taskStats",
    }
)
_VERSION_FIELDS = ("version", "versionInfo")
_NESTED_DEFAULTS = ("upgradeStrategy", "unreachableStrategy")

#: JSON kind expected for each known app field (checked for 400 "Invalid JSON").
_FIELD_KINDS: dict[str, str] = {
    "id": "string",
    "cmd": "string",
    "user": "string",
    "executor": "string",
    "role": "string",
    "killSelection": "string",
    "instances": "integer",
    "gpus": "integer",
    "cpus": "number",
    "mem": "number",
    "disk": "number",
    "backoffSeconds": "number",
    "backoffFactor": "number",
    "maxLaunchDelaySeconds": "number",
    "taskKillGracePeriodSeconds": "number",
    "args": "string-array",
    "uris": "string-array",
    "storeUrls": "string-array",
    "dependencies": "string-array",
    "acceptedResourceRoles": "string-array",
    "ports": "integer-array",
    "constraints": "array",
    "healthChecks": "object-array",
    "readinessChecks": "object-array",
    "fetch": "object-array",
    "portDefinitions": "object-array",
    "networks": "object-array",
    "env": "object",
    "secrets": "object",
    "container": "object",
    "residency": "object",
    "labels": "string-map",
    "upgradeStrategy": "number-map",
    "requirePorts": "boolean",
}
_KIND_ERRORS = {
    "string": "error.expected.jsstring",
    "integer": "error.expected.jsnumber",
    "number": "error.expected.jsnumber",
    "boolean": "error.expected.jsboolean",
    "array": "error.expected.jsarray",
    "object": "error.expected.jsobject",
}
_CMD_RULE = "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'."


def default_app_fields() -> dict[str, Any]:
    """The documented defaults filled into every app on create (a fresh copy each call).

    Clients see more than they sent, as with real Marathon, and must diff on desired fields only.
    """
    return {
        "instances": 1,
        "cpus": 1.0,
        "mem": 128.0,
        "disk": 0.0,
        "gpus": 0,
        "env": {},
        "labels": {},
        "constraints": [],
        "uris": [],
        "fetch": [],
        "storeUrls": [],
        "portDefinitions": [],
        "requirePorts": False,
        "healthChecks": [],
        "readinessChecks": [],
        "dependencies": [],
        "backoffSeconds": 1,
        "backoffFactor": 1.15,
        "maxLaunchDelaySeconds": 3600,
        "executor": "",
        "killSelection": "YOUNGEST_FIRST",
        "upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 1},
        "unreachableStrategy": {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 0},
        "secrets": {},
    }


# --------------------------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------------------------


def canonical_id(raw: str, base: str = "/") -> str | None:
    """Absolute form of ``raw`` resolved against group ``base``; ``None`` if a segment is invalid.

    Empty segments are dropped and ``.``/``..`` resolved, as Marathon's ``PathId`` does.
    """
    parts = [] if raw.startswith("/") else [p for p in base.split("/") if p]
    for segment in raw.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                return None
            parts.pop()
            continue
        if not _SEGMENT_RE.fullmatch(segment):
            return None
        parts.append(segment)
    return "/" + "/".join(parts)


def _parent(path_id: str) -> str:
    """Enclosing group of an absolute id (the root for top-level ids)."""
    head = path_id.rsplit("/", 1)[0]
    return head or "/"


def _ancestors(path_id: str) -> list[str]:
    """All enclosing groups of an absolute id, root first, excluding the id itself."""
    parts = [p for p in path_id.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _is_under(path_id: str, group_id: str) -> bool:
    """True when ``path_id`` lies strictly below ``group_id``."""
    if group_id == "/":
        return path_id != "/"
    return path_id.startswith(group_id + "/")


# --------------------------------------------------------------------------------------------
# Errors and validation
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An HTTP error answer with a Marathon-shaped JSON body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body
        self.headers = headers or {}


def _detail(path: str, *errors: str) -> dict[str, Any]:
    return {"path": path or "/", "errors": list(errors)}


def _invalid_json(details: list[dict[str, Any]]) -> ApiError:
    return ApiError(400, {"message": "Invalid JSON", "details": details})


def _not_valid(details: list[dict[str, Any]]) -> ApiError:
    return ApiError(422, {"message": "Object is not valid", "details": details})


def _not_found(message: str) -> ApiError:
    return ApiError(404, {"message": message})


def _kind_ok(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    return isinstance(value, dict)


def _type_errors(body: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """JSON type mismatches of known app fields, reported as Marathon's 400 ``details``."""
    errors: list[dict[str, Any]] = []
    for key, value in body.items():
        kind = _FIELD_KINDS.get(key)
        if kind is None or value is None:
            continue
        path = f"{prefix}/{key}"
        outer, _, inner = kind.partition("-")
        if inner in ("array", "map"):
            container = "array" if inner == "array" else "object"
            if not _kind_ok(value, container):
                errors.append(_detail(path, _KIND_ERRORS[container]))
                continue
            items = (
                ((f"{path}({i})", v) for i, v in enumerate(value))
                if inner == "array"
                else ((f"{path}/{k}", v) for k, v in value.items())
            )
            errors.extend(
                _detail(p, _KIND_ERRORS[outer]) for p, v in items if not _kind_ok(v, outer)
            )
        elif not _kind_ok(value, kind):
            errors.append(_detail(path, _KIND_ERRORS[kind]))
    return errors


def _semantic_errors(app: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Marathon's 422 rules on a full (defaults filled) app definition."""
    errors: list[dict[str, Any]] = []
    if app["instances"] < 0:
        errors.append(_detail(f"{prefix}/instances", f"got {app['instances']}, expected 0 or more"))
    for key in ("cpus", "mem", "disk"):
        if app[key] < 0:
            errors.append(_detail(f"{prefix}/{key}", f"got {app[key]}, expected 0.0 or more"))
    strategy = app.get("upgradeStrategy") or {}
    for key in ("minimumHealthCapacity", "maximumOverCapacity"):
        value = strategy.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            errors.append(
                _detail(
                    f"{prefix}/upgradeStrategy/{key}",
                    f"got {value}, expected between 0.0 and 1.0",
                )
            )
    has_cmd, has_args = bool(app.get("cmd")), bool(app.get("args"))
    if (has_cmd and has_args) or not (has_cmd or has_args or app.get("container")):
        errors.append(_detail(prefix or "/", _CMD_RULE))
    return errors


def _clean(body: Mapping[str, Any]) -> dict[str, Any]:
    """Drop nulls and runtime fields: Marathon treats both as absent on input."""
    return {k: v for k, v in body.items() if v is not None and k not in _RUNTIME_FIELDS}


def _with_defaults(app: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of a definition: id first, then given fields over the documented defaults."""
    out = default_app_fields()
    for key, value in app.items():
        if key in _NESTED_DEFAULTS and isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return {"id": app["id"], **{k: v for k, v in out.items() if k != "id"}}


def _config(app: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in app.items() if k not in _VERSION_FIELDS}


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise _invalid_json([_detail("/", "error.expected.jsobject")])
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid_json([_detail("/", f"Unexpected content: {exc}")]) from exc


def _require_object(value: Any, path: str = "/") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid_json([_detail(path, "error.expected.jsobject")])
    return value


# --------------------------------------------------------------------------------------------
# Label selectors
# --------------------------------------------------------------------------------------------


_TERM_RE = re.compile(r"(?:\\.|[-A-Za-z0-9_.])+")


class _SelectorParser:
    """Marathon's label-selector grammar: terms of ``[-A-Za-z0-9_.]``, other characters escaped.

    query: selector {, selector}; selector: term in|notin (term {, term}) | term ==|!= term | term
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _literal(self, *options: str) -> str | None:
        self._skip()
        for option in options:
            if self.text.startswith(option, self.pos):
                self.pos += len(option)
                return option
        return None

    def _term(self) -> str:
        self._skip()
        match = _TERM_RE.match(self.text, self.pos)
        if match is None:
            raise ValueError(
                f"Can not parse label selector {self.text}: term expected at {self.pos}"
            )
        self.pos = match.end()
        return re.sub(r"\\(.)", r"\1", match.group(0))

    def _selector(self) -> Callable[[Mapping[str, str]], bool]:
        key = self._term()
        start = self.pos
        if (op := self._literal("notin", "in")) and self._literal("("):
            values = [self._term()]
            while self._literal(","):
                values.append(self._term())
            if not self._literal(")"):
                raise ValueError(f"Can not parse label selector {self.text}: ')' expected")
            wanted = set(values)
            if op == "in":
                return lambda labels: key in labels and labels[key] in wanted
            return lambda labels: key in labels and labels[key] not in wanted
        self.pos = start
        if op := self._literal("==", "!="):
            value = self._term()
            if op == "==":
                return lambda labels: key in labels and labels[key] == value
            return lambda labels: key in labels and labels[key] != value
        return lambda labels: key in labels

    def parse(self) -> list[Callable[[Mapping[str, str]], bool]]:
        checks = [self._selector()]
        while self._literal(","):
            checks.append(self._selector())
        self._skip()
        if self.pos != len(self.text):
            raise ValueError(f"Can not parse label selector {self.text}: junk at {self.pos}")
        return checks


def parse_label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A predicate on a labels map for Marathon's ``label=`` query (all selectors must match).

    Supports ``key``, ``key==v``, ``key!=v``, ``key in (a,b)``, ``key notin (a,b)`` and backslash
    escapes. As in Marathon, every form requires the key to be present (so ``!=`` and ``notin``
    skip apps without the label). Raises ``ValueError`` on a malformed selector.
    """
    checks = _SelectorParser(text).parse()
    return lambda labels: all(check(labels) for check in checks)


# --------------------------------------------------------------------------------------------
# State records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as seen by the emulator (auth headers and passwords are never kept)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int


@dataclass
class _GroupRecord:
    id: str
    version: str
    dependencies: list[str] = field(default_factory=list)


@dataclass
class _Runtime:
    """Task state of one app; ``running`` only moves when a deployment finishes.

    ``incarnations`` counts, per task slot, how often its task was killed and replaced, so a
    replacement task has a new id (Marathon restarts a killed task unless told to scale down).
    """

    running: int = 0
    incarnations: dict[int, int] = field(default_factory=dict)
    last_failure: dict[str, Any] | None = None


@dataclass
class _Deployment:
    id: str
    version: str
    steps: list[list[tuple[str, str]]]
    started: float
    duration: float
    before_apps: dict[str, dict[str, Any] | None]
    before_groups: dict[str, _GroupRecord | None]
    hang: bool = False
    failing: set[str] = field(default_factory=set)

    @property
    def actions(self) -> list[tuple[str, str]]:
        return [action for step in self.steps for action in step]

    @property
    def affected(self) -> list[str]:
        return sorted({app for _, app in self.actions})

    def current_step(self, now: float) -> int:
        """1-based step reached so far, advancing evenly over the duration."""
        total = len(self.steps)
        if total == 0:
            return 0
        if self.duration <= 0:
            return total
        return min(total, 1 + int((now - self.started) / (self.duration / total)))


@dataclass
class _Change:
    """A target state for some apps and groups; ``None`` removes.

    An app target carrying ``version`` keeps it (rollbacks); otherwise a new version is assigned.
    ``actions`` forces an action name for an app (restart) regardless of the diff.
    """

    apps: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    groups: dict[str, _GroupRecord | None] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)


@dataclass
class _FailRule:
    status: int
    remaining: int
    path_prefix: str | None


@dataclass
class _DelayRule:
    seconds: float
    remaining: int | None
    path_prefix: str | None


def _matches(prefix: str | None, path: str) -> bool:
    return prefix is None or path.startswith(prefix)


def _ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def _env_switch(app: Mapping[str, Any] | None, name: str) -> bool:
    """True when an app spec sets the emulator switch ``name`` to ``"1"`` in its ``env``."""
    env = app.get("env") if app is not None else None
    return isinstance(env, dict) and str(env.get(name, "")).strip() == "1"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _embeds(request: Request) -> set[str]:
    return {
        e.strip() for v in request.query_params.getlist("embed") for e in v.split(",") if e.strip()
    }


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class MarathonServer(LoopbackServer):
    """A :class:`LoopbackServer` whose stop also ends open event streams, so shutdown is not
    held up by a client still reading /v2/events."""

    def __init__(self, emulator: MarathonEmulator, host: str, port: int) -> None:
        super().__init__(emulator.asgi_app, host=host, port=port)
        self._emulator = emulator

    def start(self) -> MarathonServer:
        if self._thread is None:
            self._emulator._closing.clear()
        super().start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._emulator._closing.set()
        super().stop()


class MarathonEmulator:
    """In-memory Marathon with timed deployments, auth, failure injection and a request log.

    All state sits behind one ``threading.Lock``: the server runs in another thread while the test
    inspects and steers it through the methods below.
    """

    def __init__(
        self,
        token: str | None = None,
        deploy_duration: float = 0.2,
        *,
        basic_auth: tuple[str, str] | None = None,
        users: Mapping[str, str] | None = None,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        max_versions: int = 50,
        max_running_deployments: int = 100,
        marathon_version: str = "1.11.0",
    ) -> None:
        if deploy_duration < 0:
            raise ValueError("deploy_duration must be >= 0")
        self.deploy_duration = deploy_duration
        self.max_versions = max_versions
        self.max_running_deployments = max_running_deployments
        self.marathon_version = marathon_version
        self._token = token
        self._basic_auth = basic_auth
        self._users = dict(users) if users is not None else dict(DEFAULT_USERS)
        self._token_ttl = token_ttl
        self._signing_key = secrets.token_bytes(32)
        self._issued: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._framework_id = f"{uuid.uuid4()}-0000"
        self._last_version: datetime | None = None
        self._apps: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, dict[str, dict[str, Any]]] = {}
        self._runtime: dict[str, _Runtime] = {}
        self._groups: dict[str, _GroupRecord] = {}
        self._group_versions: dict[str, dict[str, dict[str, Any]]] = {}
        self._running: list[_Deployment] = []
        self._events: list[dict[str, Any]] = []
        self._requests: list[RequestRecord] = []
        self._fail_next_deploy: set[str] = set()
        self._hang_next_deploy: set[str] = set()
        self._unhealthy: set[str] = set()
        self._fail_rules: list[_FailRule] = []
        self._delay_rules: list[_DelayRule] = []
        root_version = self._next_version()
        self._groups["/"] = _GroupRecord("/", root_version)
        self.asgi_app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._endpoint,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                )
            ]
        )

    # ---------------------------------------------------------------- serving

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> MarathonServer:
        """Start a real HTTP server on loopback; use as a context manager to stop it."""
        return MarathonServer(self, host, port).start()

    # ---------------------------------------------------------------- inspection

    def apps(self) -> dict[str, dict[str, Any]]:
        """Absolute id -> stored app (defaults, ``version``, ``versionInfo``, no counters)."""
        with self._lock:
            self._tick()
            return copy.deepcopy(self._apps)

    def app_status(self, app_id: str) -> dict[str, Any]:
        """The app as ``GET /v2/apps/{id}`` shows it (with counters and deployments)."""
        with self._lock:
            self._tick()
            absolute = canonical_id(app_id)
            if absolute not in self._apps:
                raise KeyError(app_id)
            return self._app_json(absolute, {"app.tasks"})

    def deployments(self) -> list[dict[str, Any]]:
        """Running deployments in the ``GET /v2/deployments`` shape."""
        with self._lock:
            self._tick()
            now = time.monotonic()
            return [self._deployment_json(d, now) for d in self._running]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Event-bus records so far (``deployment_*``, ``group_change_success``)."""
        with self._lock:
            self._tick()
            return copy.deepcopy(self._events)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        """Number of logged requests with this method (any if ``None``) under ``path_prefix``."""
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)
            )

    def reset_log(self) -> None:
        with self._lock:
            self._requests.clear()

    # ---------------------------------------------------------------- seeding and controls

    def load_app(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Seed an app as if already deployed (tasks running); returns the stored definition."""
        with self._lock:
            self._tick()
            body = _clean(spec)
            if (errors := _type_errors(body, "")) or "id" not in body:
                raise ValueError(f"invalid app spec: {errors or 'missing id'}")
            app_id = canonical_id(body["id"])
            if app_id is None or app_id == "/":
                raise ValueError(f"invalid app id {body['id']!r}")
            app = _with_defaults({**body, "id": app_id})
            if errors := _semantic_errors(app, ""):
                raise ValueError(f"invalid app spec: {errors}")
            version = self._next_version()
            app["version"] = version
            app["versionInfo"] = {"lastScalingAt": version, "lastConfigChangeAt": version}
            self._check_paths(_Change(apps={app_id: app}))
            self._store_app(app)
            self._runtime[app_id] = _Runtime(app["instances"])
            self._bump_groups({app_id}, version)
            return copy.deepcopy(app)

    def fail_next_deployment(self, app_id: str) -> None:
        """The next deployment touching the app ends with tasks short and ``deployment_failed``."""
        with self._lock:
            self._fail_next_deploy.add(self._control_id(app_id))

    def hang_next_deployment(self, app_id: str) -> None:
        """The next deployment touching the app never finishes until cancelled."""
        with self._lock:
            self._hang_next_deploy.add(self._control_id(app_id))

    def make_unhealthy(self, app_id: str) -> None:
        """From now on the app reports ``tasksHealthy: 0`` and every running task unhealthy."""
        with self._lock:
            self._unhealthy.add(self._control_id(app_id))

    def make_healthy(self, app_id: str) -> None:
        with self._lock:
            self._unhealthy.discard(self._control_id(app_id))

    def fail_next(self, status: int = 503, times: int = 1, path_prefix: str | None = None) -> None:
        """Answer the next ``times`` requests under ``path_prefix`` (``None``: all); ``status``."""
        with self._lock:
            self._fail_rules.append(_FailRule(status, times, path_prefix))

    def set_delay(
        self, seconds: float, path_prefix: str | None = None, times: int | None = None
    ) -> None:
        """Delay matching requests by ``seconds`` (until reset to 0, or for ``times`` requests)."""
        with self._lock:
            self._delay_rules = [r for r in self._delay_rules if r.path_prefix != path_prefix]
            if seconds > 0:
                self._delay_rules.append(_DelayRule(seconds, times, path_prefix))

    def start_foreign_deployment(self, app_id: str, duration: float) -> str:
        """Lock the app with a deployment someone else started; returns its id."""
        with self._lock:
            self._tick()
            absolute = self._control_id(app_id)
            current = self._apps.get(absolute)
            deployment = _Deployment(
                id=str(uuid.uuid4()),
                version=self._next_version(),
                steps=[[("RestartApplication", absolute)]],
                started=time.monotonic(),
                duration=duration,
                before_apps={absolute: copy.deepcopy(current)},
                before_groups={},
            )
            self._running.append(deployment)
            self._emit_info(deployment)
            return deployment.id

    def issue_token(self, uid: str = "bootstrapuser", ttl: float | None = None) -> str:
        """A login token as ``POST /acs/api/v1/auth/login`` would issue it."""
        with self._lock:
            return self._issue_token(uid, self._token_ttl if ttl is None else ttl)

    def _control_id(self, app_id: str) -> str:
        absolute = canonical_id(app_id)
        if absolute is None or absolute == "/":
            raise ValueError(f"invalid app id {app_id!r}")
        return absolute

    # ---------------------------------------------------------------- clock and versions

    def _next_version(self) -> str:
        """A UTC ms timestamp, strictly increasing so every version is distinct."""
        now = _ms(datetime.now(UTC))
        if self._last_version is not None and now <= self._last_version:
            now = self._last_version + timedelta(milliseconds=1)
        self._last_version = now
        return _iso(now)

    def _store_app(self, app: dict[str, Any]) -> None:
        app_id = app["id"]
        self._apps[app_id] = app
        history = self._versions.setdefault(app_id, {})
        history[app["version"]] = copy.deepcopy(app)
        for old in sorted(history)[: max(0, len(history) - self.max_versions)]:
            del history[old]
        for group_id in _ancestors(app_id):
            if group_id not in self._groups:
                self._groups[group_id] = _GroupRecord(group_id, app["version"])

    def _subtree(self, group_id: str) -> dict[str, Any]:
        return {
            "apps": {k: copy.deepcopy(v) for k, v in self._apps.items() if _is_under(k, group_id)},
            "groups": {
                k: copy.deepcopy(v)
                for k, v in self._groups.items()
                if k == group_id or _is_under(k, group_id)
            },
        }

    def _bump_groups(self, touched: Iterable[str], version: str) -> None:
        """New version (and stored snapshot) for every group enclosing or equal to a touched id."""
        bumped: set[str] = set()
        for path_id in touched:
            bumped.update(_ancestors(path_id))
            if path_id in self._groups:
                bumped.add(path_id)
        for group_id in sorted(bumped, key=len, reverse=True):
            record = self._groups.get(group_id)
            if record is None:
                continue
            record.version = version
            history = self._group_versions.setdefault(group_id, {})
            history[version] = self._subtree(group_id)
            for old in sorted(history)[: max(0, len(history) - self.max_versions)]:
                del history[old]

    # ---------------------------------------------------------------- deployments

    def _tick(self) -> None:
        """Finish every deployment whose time is up (lazy timing; called under the lock)."""
        now = time.monotonic()
        for deployment in list(self._running):
            if not deployment.hang and now - deployment.started >= deployment.duration:
                self._finish(deployment)

    def _finish(self, deployment: _Deployment) -> None:
        self._running.remove(deployment)
        for action, app_id in deployment.actions:
            app, runtime = self._apps.get(app_id), self._runtime.get(app_id)
            if app is None or runtime is None or action == "StopApplication":
                continue
            target = app["instances"]
            if app_id in deployment.failing:
                runtime.running = max(0, min(runtime.running, target - 1))
                runtime.last_failure = self._task_failure(app, "Task failed during deployment")
            else:
                runtime.running = target
        plan = self._plan_json(deployment)
        if deployment.failing:
            self._emit("deployment_failed", id=deployment.id, plan=plan, reason="tasks failed")
        else:
            self._emit("deployment_success", id=deployment.id, plan=plan)

    def _cancel(self, deployment: _Deployment, reason: str) -> None:
        """Abandon a running deployment where it stands (tasks are left as they are)."""
        self._running.remove(deployment)
        self._emit(
            "deployment_failed", id=deployment.id, plan=self._plan_json(deployment), reason=reason
        )

    def _conflicts(self, app_ids: Iterable[str]) -> list[_Deployment]:
        wanted = set(app_ids)
        return [d for d in self._running if wanted & set(d.affected)]

    def _plan(self, change: _Change) -> list[list[tuple[str, str]]]:
        """Steps of the deployment for a change: stops first, then starts, scales and restarts."""
        stops: list[tuple[str, str]] = []
        others: list[tuple[str, str]] = []
        for app_id in sorted(change.apps):
            old, new = self._apps.get(app_id), change.apps[app_id]
            if old is None and new is None:
                continue
            if new is None:
                stops.append(("StopApplication", app_id))
            elif old is None:
                others.append(("StartApplication", app_id))
            elif app_id in change.actions:
                others.append((change.actions[app_id], app_id))
            elif _config(old) != _config(new):
                scale_only = {**_config(old), "instances": new["instances"]} == _config(new)
                others.append(("ScaleApplication" if scale_only else "RestartApplication", app_id))
        return [step for step in (stops, others) if step]

    def _check_paths(self, change: _Change) -> None:
        """422 when an app id would collide with a group, or an app would sit inside an app."""
        removed_groups = {g for g, r in change.groups.items() if r is None}
        apps = {k for k in self._apps if change.apps.get(k, self._apps[k]) is not None}
        apps |= {k for k, v in change.apps.items() if v is not None}
        groups = {
            g for g in self._groups if not any(g == r or _is_under(g, r) for r in removed_groups)
        }
        groups |= {g for g, r in change.groups.items() if r is not None}
        for app_id in apps:
            groups.update(_ancestors(app_id))
        for path_id in sorted(set(change.apps) | set(change.groups)):
            if path_id in apps and path_id in groups:
                raise _not_valid(
                    [_detail("/id", f"Path {path_id} is used by both a group and an app")]
                )
            clash = next((a for a in _ancestors(path_id) if a in apps), None)
            if clash is not None and (path_id in apps or path_id in groups):
                raise _not_valid(
                    [_detail("/id", f"Path {clash} is an app and cannot contain {path_id}")]
                )

    def _commit(self, change: _Change, *, force: bool) -> _Deployment:
        """Lock-check, apply the target state at once, and start the deployment rolling it out."""
        self._check_paths(change)
        steps = self._plan(change)
        affected = {app for step in steps for _, app in step}
        conflicts = self._conflicts(affected)
        if conflicts and not force:
            raise _locked(conflicts)
        if len(self._running) - (len(conflicts) if force else 0) >= self.max_running_deployments:
            raise ApiError(
                403,
                {
                    "message": f"Max number ({self.max_running_deployments}) of running "
                    "deployments "
                    "is sustained. Wait until some deployments finish or cancel them."
                },
            )
        for deployment in conflicts:
            self._cancel(deployment, reason="cancelled by a forced change")
        version = self._next_version()
        deployment = _Deployment(
            id=str(uuid.uuid4()),
            version=version,
            steps=steps,
            started=time.monotonic(),
            duration=self.deploy_duration,
            before_apps={k: copy.deepcopy(self._apps.get(k)) for k in change.apps},
            before_groups={
                k: copy.deepcopy(self._groups.get(k)) for k in self._touched_groups(change)
            },
            hang=bool(affected & self._hang_next_deploy),
            failing=(affected & self._fail_next_deploy) | {
                app_id for app_id in affected
                if _env_switch(change.apps.get(app_id), FAIL_ENV)},
        )
        self._hang_next_deploy -= affected
        self._fail_next_deploy -= affected
        self._apply(change, version, {app: action for step in steps for action, app in step})
        self._running.append(deployment)
        self._emit_info(deployment)
        return deployment

    def _touched_groups(self, change: _Change) -> set[str]:
        """Groups a change creates, updates or removes (implicit parents included)."""
        touched = set(change.groups)
        for group_id, record in change.groups.items():
            if record is None:
                touched |= {g for g in self._groups if _is_under(g, group_id)}
        for app_id, target in change.apps.items():
            if target is not None:
                touched |= {g for g in _ancestors(app_id) if g not in self._groups}
        return touched

    def _apply(self, change: _Change, version: str, actions: Mapping[str, str]) -> None:
        for app_id, target in change.apps.items():
            if target is None:
                self._apps.pop(app_id, None)
                self._versions.pop(app_id, None)
                self._runtime.pop(app_id, None)
                continue
            old = self._apps.get(app_id)
            app = copy.deepcopy(target)
            if "version" not in app:
                app["version"] = version
                app["versionInfo"] = _version_info(old, actions.get(app_id), version)
            if old is None:
                self._runtime[app_id] = _Runtime(0)
            self._store_app(app)
        for group_id, record in sorted(change.groups.items(), key=lambda kv: len(kv[0])):
            if record is None:
                for path_id in [g for g in self._groups if g == group_id or _is_under(g, group_id)]:
                    if path_id != "/":
                        del self._groups[path_id]
                        self._group_versions.pop(path_id, None)
                for app_id in [a for a in self._apps if _is_under(a, group_id)]:
                    self._apps.pop(app_id)
                    self._runtime.pop(app_id, None)
            else:
                self._groups[group_id] = copy.deepcopy(record)
                for ancestor in _ancestors(group_id):
                    self._groups.setdefault(ancestor, _GroupRecord(ancestor, version))
        self._bump_groups(set(change.apps) | set(change.groups), version)

    def _rollback_change(self, deployment: _Deployment) -> _Change:
        """The change that reverts a deployment to the state it started from."""
        change = _Change()
        for app_id, before in deployment.before_apps.items():
            if before != self._apps.get(app_id):
                change.apps[app_id] = copy.deepcopy(before)
        for group_id, record in deployment.before_groups.items():
            if group_id != "/":
                change.groups[group_id] = copy.deepcopy(record)
        return change

    # ---------------------------------------------------------------- JSON views

    def _is_unhealthy(self, app_id: str) -> bool:
        return app_id in self._unhealthy or _env_switch(self._apps.get(app_id), UNHEALTHY_ENV)

    def _counters(self, app_id: str) -> dict[str, int]:
        """Task counters; health counts only tasks of apps with ``healthChecks`` (as Marathon)."""
        app = self._apps[app_id]
        running = self._runtime.get(app_id, _Runtime()).running
        deploying = any(app_id in d.affected for d in self._running)
        checked = bool(app.get("healthChecks"))
        unhealthy = self._is_unhealthy(app_id)
        return {
            "tasksStaged": max(app["instances"] - running, 0) if deploying else 0,
            "tasksRunning": running,
            "tasksHealthy": running if checked and not unhealthy else 0,
            "tasksUnhealthy": running if checked and unhealthy else 0,
        }

    def _task_id(self, app_id: str, version: str, index: int, incarnation: int) -> str:
        slug = app_id.strip("/").replace("/", "_")
        task_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"{app_id}@{version}#{index}/{incarnation}")
        return f"{slug}.{task_uuid}"

    def _tasks(self, app_id: str) -> list[dict[str, Any]]:
        """Running tasks; with health checks each carries ``healthCheckResults``.

        A result has Marathon's keys (``alive``, ``consecutiveFailures``, ``firstSuccess``,
        ``lastSuccess``, ``lastFailure``, ``lastFailureCause``, ``taskId``, ``instanceId``).
        """
        app = self._apps[app_id]
        runtime = self._runtime.get(app_id, _Runtime())
        healthy = not self._is_unhealthy(app_id)
        version = app["version"]
        tasks = []
        for index in range(runtime.running):
            task_id = self._task_id(app_id, version, index, runtime.incarnations.get(index, 0))
            ports = [10000 + index]
            task: dict[str, Any] = {
                "id": task_id,
                "appId": app_id,
                "host": "127.0.0.1",
                "ports": ports,
                "servicePorts": [],
                "slaveId": f"{self._framework_id.split('-')[0]}-S0",
                "state": "TASK_RUNNING",
                "stagedAt": version,
                "startedAt": version,
                "version": version,
                "ipAddresses": [{"ipAddress": "127.0.0.1", "protocol": "IPv4"}],
            }
            if app.get("healthChecks"):
                task["healthCheckResults"] = [
                    self._health_result(task_id, version, healthy) for _ in app["healthChecks"]
                ]
            tasks.append(task)
        return tasks

    @staticmethod
    def _health_result(task_id: str, since: str, healthy: bool) -> dict[str, Any]:
        return {
            "alive": healthy,
            "consecutiveFailures": 0 if healthy else 3,
            "firstSuccess": since if healthy else None,
            "lastSuccess": since if healthy else None,
            "lastFailure": None if healthy else since,
            "lastFailureCause": None if healthy else "HTTP 503 Service Unavailable",
            "taskId": task_id,
            "instanceId": task_id.replace(".", ".instance-", 1),
        }

    def _task_failure(self, app: Mapping[str, Any], message: str) -> dict[str, Any]:
        """``lastTaskFailure``: the shape Marathon reports for an app's last failed task."""
        app_id = app["id"]
        return {
            "appId": app_id,
            "host": "127.0.0.1",
            "message": message,
            "state": "TASK_FAILED",
            "taskId": self._task_id(app_id, app["version"], 0, -1),
            "timestamp": _iso(datetime.now(UTC)),
            "version": app["version"],
            "slaveId": f"{self._framework_id.split('-')[0]}-S0",
        }

    def _app_json(self, app_id: str, embeds: set[str]) -> dict[str, Any]:
        """Stored app plus counters and ``deployments`` (always), plus what ``embed`` asks for."""
        out = copy.deepcopy(self._apps[app_id])
        out.update(self._counters(app_id))
        out["deployments"] = [{"id": d.id} for d in self._running if app_id in d.affected]
        names = {e.split(".", 1)[-1] for e in embeds}
        if "tasks" in names:
            out["tasks"] = self._tasks(app_id)
        failure = self._runtime.get(app_id, _Runtime()).last_failure
        if "lastTaskFailure" in names and failure is not None:
            out["lastTaskFailure"] = copy.deepcopy(failure)
        if "readiness" in names:
            out["readinessCheckResults"] = []
        if "taskStats" in names:
            out["taskStats"] = {}
        return out

    def _group_json(self, group_id: str, embeds: set[str]) -> dict[str, Any]:
        record = self._groups[group_id]
        with_apps = not embeds or "group.apps" in embeds
        with_groups = not embeds or "group.groups" in embeds
        out: dict[str, Any] = {
            "id": group_id,
            "dependencies": list(record.dependencies),
            "version": record.version,
        }
        if with_apps:
            app_embeds = {
                "apps." + e.split("group.apps.", 1)[1]
                for e in embeds
                if e.startswith("group.apps.")
            }
            apps = sorted(a for a in self._apps if _parent(a) == group_id)
            if app_embeds:
                out["apps"] = [self._app_json(a, app_embeds) for a in apps]
            else:
                out["apps"] = [copy.deepcopy(self._apps[a]) for a in apps]
        if with_groups:
            children = sorted(g for g in self._groups if g != "/" and _parent(g) == group_id)
            out["groups"] = [self._group_json(g, embeds) for g in children]
        return out

    def _deployment_json(self, deployment: _Deployment, now: float) -> dict[str, Any]:
        current = deployment.current_step(now)
        current_actions = deployment.steps[current - 1] if current else []
        return {
            "id": deployment.id,
            "version": deployment.version,
            "affectedApps": deployment.affected,
            "affectedPods": [],
            "steps": _steps_json(deployment.steps),
            "currentActions": [
                {"action": action, "app": app, "readinessCheckResults": []}
                for action, app in current_actions
            ],
            "currentStep": current,
            "totalSteps": len(deployment.steps),
        }

    def _plan_json(self, deployment: _Deployment) -> dict[str, Any]:
        return {
            "id": deployment.id,
            "version": deployment.version,
            "steps": _steps_json(deployment.steps),
            "affectedApps": deployment.affected,
        }

    def _emit(self, event_type: str, **payload: Any) -> None:
        self._events.append(
            {"eventType": event_type, "timestamp": _iso(datetime.now(UTC)), **payload}
        )

    def _emit_info(self, deployment: _Deployment) -> None:
        first = deployment.steps[0] if deployment.steps else []
        self._emit(
            "deployment_info",
            plan=self._plan_json(deployment),
            currentStep={"actions": [{"action": a, "app": app} for a, app in first]},
        )

    # ---------------------------------------------------------------- auth

    def _issue_token(self, uid: str, ttl: float) -> str:
        """A JWT-shaped, HMAC-signed opaque token; validity is tracked server-side."""

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = b64(
            json.dumps(
                {"uid": uid, "exp": int(time.time() + ttl), "jti": secrets.token_hex(8)}
            ).encode()
        )
        signature = b64(
            hmac.new(self._signing_key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
        )
        token = f"{header}.{claims}.{signature}"
        self._issued[token] = time.monotonic() + ttl
        return token

    def _token_valid(self, presented: str) -> bool:
        if self._token is not None and hmac.compare_digest(
            presented.encode(), self._token.encode()
        ):
            return True
        expiry = self._issued.get(presented)
        return expiry is not None and time.monotonic() < expiry

    def _basic_valid(self, encoded: str) -> bool:
        if self._basic_auth is None:
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        want_user, want_password = self._basic_auth
        return hmac.compare_digest(user.encode(), want_user.encode()) & hmac.compare_digest(
            password.encode(), want_password.encode()
        )

    def _unauthorized(self, authorization: str) -> ApiError | None:
        """``None`` when the request may pass; otherwise the 401 to answer."""
        if self._token is None and self._basic_auth is None:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        if self._token is not None and authorization.startswith("token="):
            if self._token_valid(authorization[len("token=") :].strip()):
                return None
        elif scheme.lower() == "basic" and self._basic_valid(value.strip()):
            return None
        if self._token is not None:
            challenge = "acsjwt"
            message = (
                "Unauthorized: a valid 'Authorization: token=<DC/OS token>' header is required"
            )
        else:
            challenge = 'Basic realm="Mesosphere"'
            message = "Unauthorized: valid HTTP basic credentials are required"
        return ApiError(401, {"message": message}, {"WWW-Authenticate": challenge})

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

    def _take_failure(self, path: str) -> int | None:
        for rule in self._fail_rules:
            if _matches(rule.path_prefix, path):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._fail_rules.remove(rule)
                return rule.status
        return None

    def _take_delay(self, path: str) -> float:
        with self._lock:
            for rule in self._delay_rules:
                if _matches(rule.path_prefix, path):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._delay_rules.remove(rule)
                    return rule.seconds
        return 0.0

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


# --------------------------------------------------------------------------------------------
# Helpers used by the handlers
# --------------------------------------------------------------------------------------------


def _force(request: Request) -> bool:
    return _truthy(request.query_params.get("force"))


def _locked(conflicts: list[_Deployment]) -> ApiError:
    return ApiError(
        409,
        {
            "message": "App is locked by one or more deployments. Override with the option "
            f"'?force=true'. View details at '/v2/deployments/{conflicts[0].id}'.",
            "deployments": [{"id": d.id} for d in conflicts],
        },
    )


def _deployment_result(
    status: int, deployment: _Deployment, headers: Mapping[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    return (
        status,
        {"deploymentId": deployment.id, "version": deployment.version},
        {**(headers or {}), "Marathon-Deployment-Id": deployment.id},
    )


def _steps_json(steps: list[list[tuple[str, str]]]) -> list[dict[str, Any]]:
    return [{"actions": [{"action": a, "app": app} for a, app in step]} for step in steps]


def _version_info(
    old: Mapping[str, Any] | None, action: str | None, version: str
) -> dict[str, str]:
    """Config changes move both stamps; a scale moves only ``lastScalingAt``; no-ops keep both."""
    if old is None or action in ("StartApplication", "RestartApplication"):
        return {"lastScalingAt": version, "lastConfigChangeAt": version}
    previous = old.get("versionInfo") or {}
    if action == "ScaleApplication":
        return {
            "lastScalingAt": version,
            "lastConfigChangeAt": previous.get("lastConfigChangeAt", version),
        }
    return {
        "lastScalingAt": previous.get("lastScalingAt", version),
        "lastConfigChangeAt": previous.get("lastConfigChangeAt", version),
    }


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


# --------------------------------------------------------------------------------------------
# Stand-alone server
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator; the token comes from ``MARATHON_EMULATOR_TOKEN`` (never argv)."""
    parser = standalone_parser("marathon", 8080, "MARATHON_EMULATOR_TOKEN")
    parser.add_argument("--deploy-duration", type=float, default=0.2,
                        help="seconds each deployment runs (0.2)")
    args = parser.parse_args(argv)
    token = token_from_env("MARATHON_EMULATOR_TOKEN")
    emulator = MarathonEmulator(token=token, deploy_duration=args.deploy_duration)
    serve_forever(emulator.asgi_app, "Marathon", f"http://{args.host}:{args.port}",
                  "MARATHON_EMULATOR_TOKEN", token is not None, args.host, args.port)


if __name__ == "__main__":
    main()

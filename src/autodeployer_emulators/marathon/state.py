"""The emulated Marathon's state and rules: apps, groups, timed deployments, auth tokens.

No HTTP here: :class:`MarathonState` holds everything behind one lock; the routes and a test
(in-process, through the public methods) read and change it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request

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
#: ``"<seconds>"``: the tasks pass their health checks at first and fail them from that many seconds
#: after the app's version was written (a service that starts well and breaks under load): the
#: deployment succeeds, then ``tasksUnhealthy`` counts the running tasks and ``lastTaskFailure``
#: reports a task killed for failing its health checks, as Marathon does when it replaces one.
UNHEALTHY_AFTER_ENV = "AUTODEPLOYER_EMULATOR_UNHEALTHY_AFTER"
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


def _unhealthy_since(app: Mapping[str, Any] | None) -> datetime | None:
    """When the ``UNHEALTHY_AFTER_ENV`` switch of an app spec has made its tasks unhealthy (None: not yet, or
    not switched): its seconds after the app's ``version``."""
    env = app.get("env") if app is not None else None
    raw = env.get(UNHEALTHY_AFTER_ENV) if isinstance(env, dict) else None
    if raw is None or app is None:
        return None
    try:
        after = float(str(raw))
        version = datetime.fromisoformat(str(app.get("version", "")).replace("Z", "+00:00"))
    except ValueError:
        return None
    since = version + timedelta(seconds=after)
    return since if datetime.now(UTC) >= since else None


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


class MarathonState:
    """In-memory Marathon: the model, its rules and the test-side controls (no HTTP)."""

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
        app = self._apps.get(app_id)
        return app_id in self._unhealthy or _env_switch(app, UNHEALTHY_ENV) or _unhealthy_since(app) is not None

    def _health_failure(self, app: Mapping[str, Any]) -> dict[str, Any] | None:
        """``lastTaskFailure`` of an app whose tasks fail health checks after a delay: a task killed then."""
        since = _unhealthy_since(app)
        if since is None or not app.get("healthChecks"):
            return None
        failure = self._task_failure(app, "Task was killed since health check failed. Reason: HTTP 503")
        failure.update(state="TASK_KILLED", timestamp=_iso(since))
        return failure

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
        failure = self._runtime.get(app_id, _Runtime()).last_failure or self._health_failure(self._apps[app_id])
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

    # ---------------------------------------------------------------- injected failures and delays

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


def _locked(conflicts: list[_Deployment]) -> ApiError:
    return ApiError(
        409,
        {
            "message": "App is locked by one or more deployments. Override with the option "
            f"'?force=true'. View details at '/v2/deployments/{conflicts[0].id}'.",
            "deployments": [{"id": d.id} for d in conflicts],
        },
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

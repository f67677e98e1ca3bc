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
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from ..errors import ConfigError, Refused, TargetError
from .transport import error_detail, request
from ..jsondiff import JSONProblem, loads_strict, unified
from ..logs import get_logger
from ..model import Action, ApplyReport, Change, Plan, Problem, Tree
from ..settings import EnvReader, Frozen, StrictBool, Variable, validate_model
from .base import SyncContext, TargetDeps

KIND = "marathon"
LABEL = "DPLOY"
DEFAULT_APP_NAME = "autodeployer"
SECRET_KEYS: tuple[str, ...] = ("token", "password")
VARIABLES: tuple[Variable, ...] = (
    Variable("MARATHON_URL", None, "Marathon base URL without /v2 (DC/OS: https://MASTER/service/marathon)."),
    Variable("MARATHON_TOKEN", None, "DC/OS auth token, sent as 'Authorization: token=<t>'.", True),
    Variable("MARATHON_USER", None, "User for HTTP basic auth to Marathon (with MARATHON_PASSWORD)."),
    Variable("MARATHON_PASSWORD", None, "Password for HTTP basic auth to Marathon.", True),
    Variable("MARATHON_FORCE", "false", "Write with force=true: cancel locking deployments instead of waiting."),
    Variable("DEPLOY_TIMEOUT", "300", "Seconds a Marathon deployment may take before the sync fails."),
    Variable("ROLLBACK_ON_FAILURE", "false", "Roll back a Marathon deployment that failed or timed out."),
    Variable("PRUNE", "false", "Delete Marathon apps labelled DPLOY=<APP_NAME> that are no longer in Git."),
    Variable("SPECS_DIR", "specs", "Directory under SYNC_ROOT holding the Marathon app and group *.json files."),
)

MAX_SPEC_BYTES = 10 * 1024 * 1024
# Fields Marathon computes itself: never desired state (a spec copied from GET output carries them).
RUNTIME_FIELDS = frozenset(
    {"version", "versionInfo", "tasksStaged", "tasksRunning", "tasksHealthy", "tasksUnhealthy",
     "deployments", "tasks", "lastTaskFailure", "readinessCheckResults", "taskStats"}
)
MAP_FIELDS = frozenset({"env", "labels"})  # compared as whole maps, not key by key
GROUP_KEYS = frozenset({"id", "apps", "groups", "dependencies"})
LOCK_RETRIES = 5
POLL_FIRST, POLL_MAX = 0.05, 2.0
_SEGMENT = re.compile(r"(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])")
_SELECTOR_SAFE = re.compile(r"[-A-Za-z0-9_.]")


class Spec(Frozen):
    kind: Literal["marathon"] = "marathon"
    url: str
    token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None
    verify_tls: StrictBool = True
    force: StrictBool = False
    deploy_timeout: float = Field(default=300.0, gt=0)
    rollback_on_failure: StrictBool = False
    prune: StrictBool = False
    specs_dir: str = "specs"
    app_name: str = Field(default=DEFAULT_APP_NAME, min_length=1)


# --------------------------------------------------------------------------- settings
def normalise_url(value: str) -> str:
    """Scheme added (http, as Marathon listens on 8080), no trailing slash, no /v2."""
    url = value.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    return url.removesuffix("/v2").rstrip("/")


def normalise_token(value: str) -> str:
    """Accept a token pasted with its header form ('token=...') or as 'Bearer ...'; send token= only."""
    token = value.strip().strip('"').strip("'")
    for prefix in ("token=", "bearer "):
        if token.lower().startswith(prefix):
            token = token[len(prefix):].strip()
    return token


def normalise_dir(value: str, where: str) -> str:
    parts = [p for p in PurePosixPath(value.strip() or ".").parts if p not in ("/", ".")]
    if ".." in parts:
        raise ConfigError(f"{where}: must stay inside SYNC_ROOT, got {value!r}")
    return "/".join(parts)


def check_auth_pair(spec: Spec, where: str) -> Spec:
    if bool(spec.user) != bool(spec.password):
        raise ConfigError(f"{where}: basic auth needs both the user and the password")
    return spec


def settings_from_env(env: EnvReader) -> dict[str, Any]:
    """Everything but the URL and the label value: shared by the env form and dploy projects."""
    token = env.secret("MARATHON_TOKEN")
    return {
        "token": SecretStr(normalise_token(token.get_secret_value())) if token else None,
        "user": env.str("MARATHON_USER"),
        "password": env.secret("MARATHON_PASSWORD"),
        "verify_tls": env.bool("VERIFY_TLS"),
        "force": env.bool("MARATHON_FORCE"),
        "deploy_timeout": env.number("DEPLOY_TIMEOUT", minimum=0.1) or 300.0,
        "rollback_on_failure": env.bool("ROLLBACK_ON_FAILURE"),
        "prune": env.bool("PRUNE"),
        "specs_dir": normalise_dir(env.str("SPECS_DIR") or "specs", "SPECS_DIR"),
    }


def spec_from_env(env: EnvReader, app_name: str | None = None) -> Spec:
    url = env.str("MARATHON_URL")
    if not url:
        raise ConfigError("MARATHON_URL is required: the Marathon base URL, e.g. http://marathon.mesos:8080")
    spec = Spec(
        url=normalise_url(url),
        app_name=env.str("APP_NAME") or app_name or DEFAULT_APP_NAME,
        **settings_from_env(env),
    )
    return check_auth_pair(spec, "MARATHON_USER/MARATHON_PASSWORD")


def spec_from_yaml(data: dict[str, Any], where: str, app_name: str | None = None) -> Spec:
    data = dict(data)
    if app_name:
        data.setdefault("app_name", app_name)  # the DPLOY label defaults to the app's name
    if "url" not in data:
        raise ConfigError(f"{where}.url: the Marathon base URL is required")
    data["url"] = normalise_url(str(data["url"]))
    if data.get("token"):
        data["token"] = normalise_token(str(data["token"]))
    data["specs_dir"] = normalise_dir(str(data.get("specs_dir", "specs")), f"{where}.specs_dir")
    return check_auth_pair(validate_model(Spec, data, where), where)


# --------------------------------------------------------------------------- ids
def absolute_id(raw: str, base: str = "/") -> str | None:
    """Marathon's path resolution: relative to `base`, '.'/'..' resolved; None if a segment is invalid."""
    parts = [] if raw.startswith("/") else [p for p in base.split("/") if p]
    for segment in raw.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                return None
            parts.pop()
            continue
        if not _SEGMENT.fullmatch(segment):
            return None
        parts.append(segment)
    return "/" + "/".join(parts)


def is_under(path_id: str, group_id: str) -> bool:
    return path_id != group_id and (group_id == "/" or path_id.startswith(group_id + "/"))


def parent_of(path_id: str) -> str:
    return path_id.rsplit("/", 1)[0] or "/"


def label_selector(app_name: str) -> str:
    """`DPLOY==<app_name>` with characters outside the selector grammar escaped."""
    escaped = "".join(c if _SELECTOR_SAFE.fullmatch(c) else "\\" + c for c in app_name)
    return f"{LABEL}=={escaped}"


# --------------------------------------------------------------------------- desired state
@dataclass
class DesiredApp:
    id: str
    spec: dict[str, Any]  # absolute id, DPLOY label, runtime fields dropped
    file: str
    group: str | None  # id of the group file it came from


@dataclass
class DesiredGroup:
    id: str
    dependencies: list[str] | None  # None: the spec does not set them
    file: str


@dataclass
class Desired:
    apps: dict[str, DesiredApp] = field(default_factory=dict)
    groups: dict[str, DesiredGroup] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


class _Parser:
    """Reads spec files into :class:`Desired`, collecting every problem before refusing."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.out = Desired()
        self.problems: list[Problem] = []

    def file(self, doc: Any, shown: str) -> None:
        if not isinstance(doc, dict):
            self.problems.append(Problem("expected a JSON object (one app or one group)", file=shown))
        elif "apps" in doc or "groups" in doc:
            self.group(doc, "/", shown, None)
        else:
            self.app(doc, "/", shown, None)

    def _id(self, doc: dict[str, Any], base: str, shown: str, what: str) -> str | None:
        raw = doc.get("id")
        if not isinstance(raw, str) or not raw.strip():
            self.problems.append(Problem(f"{what} has no id (a non-empty string is required)", file=shown))
            return None
        resolved = absolute_id(raw.strip(), base)
        if resolved is None or (resolved == "/" and what != "group"):
            self.problems.append(Problem(
                "invalid id: segments use lower-case letters and digits, with '-' and '.' only between them",
                file=shown, entity=raw))
            return None
        if base != "/" and not is_under(resolved, base):
            self.problems.append(Problem(f"{what} id {resolved} is not inside group {base}", file=shown, entity=raw))
            return None
        return resolved

    def _dependencies(self, value: Any, base: str, shown: str, entity: str) -> list[str] | None:
        """Relative dependencies resolved as Marathon stores them, so they never show as drift."""
        if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
            self.problems.append(Problem("dependencies must be an array of ids", file=shown, entity=entity))
            return None
        resolved = [absolute_id(d, base) for d in value]
        if any(r is None or r == "/" for r in resolved):
            self.problems.append(Problem("dependencies hold an invalid id", file=shown, entity=entity))
            return None
        return [r for r in resolved if r]

    def app(self, doc: dict[str, Any], base: str, shown: str, group: str | None) -> None:
        app_id = self._id(doc, base, shown, "app")
        if app_id is None:
            return
        dropped = sorted(RUNTIME_FIELDS & set(doc))
        if dropped:
            self.out.warnings.append(f"{shown}: {app_id}: ignored runtime field(s) {', '.join(dropped)}")
        spec = {k: v for k, v in doc.items() if k not in RUNTIME_FIELDS}
        spec["id"] = app_id
        labels = spec.get("labels", {})
        if not isinstance(labels, dict):
            self.problems.append(Problem("labels must be an object", file=shown, entity=app_id))
            return
        current = labels.get(LABEL)
        if current is not None and current != self.app_name:
            self.out.warnings.append(
                f"{shown}: {app_id}: label {LABEL}={current!r} replaced by {self.app_name!r}")
        spec["labels"] = {**labels, LABEL: self.app_name}
        if "dependencies" in spec:
            deps = self._dependencies(spec["dependencies"], parent_of(app_id), shown, app_id)
            if deps is None:
                return
            spec["dependencies"] = deps
        previous = self.out.apps.get(app_id)
        if previous is not None:
            self.problems.append(Problem(f"app defined twice: in {previous.file} and in {shown}", entity=app_id))
            return
        self.out.apps[app_id] = DesiredApp(app_id, spec, shown, group)

    def group(self, doc: dict[str, Any], base: str, shown: str, parent: str | None) -> None:
        group_id = self._id(doc, base, shown, "group")
        if group_id is None:
            return
        unknown = sorted(set(doc) - GROUP_KEYS)
        if unknown:
            self.out.warnings.append(f"{shown}: group {group_id}: ignored key(s) {', '.join(unknown)}")
        deps = None
        if doc.get("dependencies") is not None:
            deps = self._dependencies(doc["dependencies"], parent_of(group_id), shown, group_id)
        known = self.out.groups.get(group_id)
        if known and deps is not None and known.dependencies is not None and known.dependencies != deps:
            self.problems.append(Problem(f"group dependencies differ between {known.file} and {shown}",
                                         entity=group_id))
        elif known is None or deps is not None:
            self.out.groups[group_id] = DesiredGroup(group_id, deps, shown)
        top = parent or group_id
        for key, handler in (("apps", self.app), ("groups", self._child_group)):
            items = doc.get(key)
            if items is None:
                continue
            if not isinstance(items, list):
                self.problems.append(Problem(f"{key} must be an array", file=shown, entity=group_id))
                continue
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    self.problems.append(Problem(f"{key}[{index}] is not an object", file=shown, entity=group_id))
                    continue
                handler(item, group_id, shown, top)

    def _child_group(self, doc: dict[str, Any], base: str, shown: str, top: str | None) -> None:
        self.group(doc, base, shown, top)

    def check_paths(self) -> None:
        """An id cannot be both an app and a group, nor an app contain another app."""
        ids = set(self.out.apps)
        for app_id, app in self.out.apps.items():
            if app_id in self.out.groups:
                self.problems.append(Problem("id is used by both an app and a group", file=app.file, entity=app_id))
            clash = next((a for a in ids if is_under(app_id, a)), None)
            if clash:
                self.problems.append(Problem(f"app {clash} cannot contain {app_id}", file=app.file, entity=app_id))


def spec_files(tree: Tree, specs_dir: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, shown path) of the top-level *.json in specs_dir by file name, and the files ignored."""
    prefix = f"{specs_dir}/" if specs_dir else ""
    chosen: list[tuple[str, str]] = []
    ignored: list[str] = []
    for path in tree.files:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):]
        if "/" in rest or not rest.endswith(".json"):
            ignored.append(path)
            continue
        shown = f"{tree.sync_root}/{path}" if tree.sync_root else path
        chosen.append((path, shown))
    chosen.sort(key=lambda item: PurePosixPath(item[0]).name)
    return chosen, sorted(ignored)


def parse_desired(tree: Tree, specs_dir: str, app_name: str) -> Desired:
    """Read and validate the spec files; raise Refused listing every problem, each with its file."""
    parser = _Parser(app_name)
    chosen, ignored = spec_files(tree, specs_dir)
    for path, shown in chosen:
        file = tree.files[path]
        if file.is_symlink:
            parser.problems.append(Problem("is a symbolic link; links are not followed", file=shown))
            continue
        if file.oversize or file.size > MAX_SPEC_BYTES:
            parser.problems.append(Problem(f"is {file.size} bytes; the limit is {MAX_SPEC_BYTES} bytes", file=shown))
            continue
        try:
            doc = loads_strict(file.data)
        except JSONProblem as exc:
            parser.problems.append(Problem(str(exc), file=shown))
            continue
        parser.file(doc, shown)
    parser.check_paths()
    if parser.problems:
        raise Refused(f"Marathon specs at {tree.revision[:12]} are not deployable", parser.problems)
    desired = parser.out
    where = f"{tree.sync_root}/{specs_dir}" if tree.sync_root else (specs_dir or "SYNC_ROOT")
    if not chosen:
        desired.notices.append(f"no *.json spec files in {where}/")
    if ignored:
        shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        desired.notices.append(f"ignored {len(ignored)} file(s) in {where}/ that are not top-level *.json: {shown}")
    if ".pat" in tree.files:
        desired.warnings.append(".pat is committed to the repository: revoke that token and keep it out of Git")
    return desired


# --------------------------------------------------------------------------- diff
def _subset(live: Any, want: Any) -> Any:
    if isinstance(want, dict) and isinstance(live, dict):
        return {k: _subset(live[k], v) for k, v in want.items() if k in live}
    return live


def removed_paths(previous: Any, current: Any, top: bool = True) -> list[tuple[str, ...]]:
    """Paths set in the last applied spec but no longer in Git (maps and arrays compare whole)."""
    if not (isinstance(previous, dict) and isinstance(current, dict)):
        return []
    found: list[tuple[str, ...]] = []
    for key, value in previous.items():
        if key not in current:
            found.append((key,))
        elif not (top and key in MAP_FIELDS):
            found.extend((key, *rest) for rest in removed_paths(value, current[key], top=False))
    return found


def _copy_path(source: dict[str, Any], target: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = source
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    for key in path[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            return  # the live value is no object here: the difference already shows
    target[path[-1]] = node


def compared_view(
    live: dict[str, Any], want: dict[str, Any], removed: Iterable[tuple[str, ...]] = ()
) -> dict[str, Any]:
    """The part of the live app that Git speaks about: what it sets, plus what it stopped setting."""
    view = {k: live[k] if k in MAP_FIELDS else _subset(live[k], v) for k, v in want.items() if k in live}
    for path in removed:
        _copy_path(live, view, path)
    return view


def strip_runtime(app: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in app.items() if k not in RUNTIME_FIELDS}


@dataclass
class Live:
    managed: dict[str, dict[str, Any]]  # apps carrying our label
    apps: dict[str, dict[str, Any] | None]  # every desired id: the live app, or None when missing
    groups: dict[str, list[str] | None]  # live dependencies of groups whose dependencies Git sets


@dataclass
class Payload:
    """What apply writes, in order: app PUTs, group PUTs, then DELETEs of pruned apps."""

    desired: Desired
    puts: list[str] = field(default_factory=list)
    group_puts: dict[str, list[str]] = field(default_factory=dict)  # group id -> dependencies to write
    deletes: list[str] = field(default_factory=list)
    previous_versions: dict[str, str | None] = field(default_factory=dict)

    def memory(self) -> dict[str, Any]:
        return {
            "apps": {i: a.spec for i, a in self.desired.apps.items()},
            "groups": {i: g.dependencies for i, g in self.desired.groups.items() if g.dependencies is not None},
        }


def diff(desired: Desired, live: Live, memory: dict[str, Any] | None, *, prune: bool, app_name: str) -> Plan:
    """Per-app subset diff; removed fields come from `memory` (the last applied specs)."""
    previous_apps = (memory or {}).get("apps") or {}
    previous_groups = (memory or {}).get("groups") or {}
    payload = Payload(desired)
    changes: list[Change] = []
    warnings = list(desired.warnings)
    for app_id, app in desired.apps.items():
        have = live.apps.get(app_id)
        payload.previous_versions[app_id] = have.get("version") if have else None
        if have is None:
            changes.append(Change(Action.ADD, app_id, "app", unified(None, app.spec, app_id.lstrip("/"))))
            payload.puts.append(app_id)
            continue
        removed = removed_paths(previous_apps.get(app_id), app.spec)
        view = compared_view(have, app.spec, removed)
        if view != app.spec:
            changes.append(Change(Action.CHANGE, app_id, "app", unified(view, app.spec, app_id.lstrip("/"))))
            payload.puts.append(app_id)
    for group_id, group in desired.groups.items():
        want = group.dependencies
        if want is None and group_id in previous_groups:
            want = []  # dependencies deleted from Git are reset
        if want is None or group_id not in live.groups:
            continue
        have_deps = live.groups[group_id]
        if sorted(have_deps or []) != sorted(want):
            before = None if have_deps is None else {"dependencies": have_deps}
            action = Action.ADD if have_deps is None else Action.CHANGE
            text = unified(before, {"dependencies": want}, group_id.lstrip("/") or "/")
            changes.append(Change(action, group_id, "group", text))
            payload.group_puts[group_id] = want
    orphans = sorted(set(live.managed) - set(desired.apps))
    for app_id in orphans:
        if prune:
            text = unified(strip_runtime(live.managed[app_id]), None, app_id.lstrip("/"))
            changes.append(Change(Action.REMOVE, app_id, "app", text))
            payload.deletes.append(app_id)
        else:
            warnings.append(f"would prune {app_id}: it carries {LABEL}={app_name} but is not in Git (PRUNE=false)")
    return Plan(
        changes=changes,
        warnings=warnings,
        notices=list(desired.notices),
        payload=payload,
        desired_count=len(desired.apps),
        live_count=len(live.managed),
        empties_target=bool(payload.deletes) and not desired.apps,
    )


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


# --------------------------------------------------------------------------- the target
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
        self._http = deps.http
        self._headers = {"Accept": "application/json"}
        self._auth: httpx.BasicAuth | None = None
        if spec.token is not None:
            self._headers["Authorization"] = f"token={spec.token.get_secret_value()}"
        elif spec.user and spec.password is not None:
            self._auth = httpx.BasicAuth(spec.user, spec.password.get_secret_value())
        self._cache: tuple[str, Desired] | None = None

    # ------------------------------------------------------------------ HTTP
    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.spec.url + path
        if self._auth is not None:
            kwargs["auth"] = self._auth
        response = await request(self._http, method, url, headers=self._headers, **kwargs)
        if response.status_code == 401:
            raise TargetError(f"{method} {url}: 401 unauthorized; {self._auth_hint()}")
        return response

    def _auth_hint(self) -> str:
        if self.spec.token is not None:
            return "Marathon rejected the DC/OS token in MARATHON_TOKEN (expired or wrong?)"
        if self._auth is not None:
            return "Marathon rejected MARATHON_USER/MARATHON_PASSWORD"
        return "Marathon requires authentication: set MARATHON_TOKEN (a DC/OS token) or MARATHON_USER/MARATHON_PASSWORD"

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise TargetError(f"{what}: Marathon answered with something that is not JSON") from None

    async def _get(self, path: str, **params: str) -> Any | None:
        """JSON of a GET; None on 404."""
        response = await self._call("GET", path, params=params or None)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise TargetError(f"GET {self.spec.url}{path}: {response.status_code} {error_detail(response)}")
        return self._json(response, f"GET {path}")

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
        return asyncio.get_running_loop().create_task(self._managed_apps())

    async def _managed_apps(self) -> Any:
        return await self._get("/v2/apps", label=label_selector(self.spec.app_name))

    async def live(self, desired: Desired, memory: dict[str, Any] | None = None,
                   listed: asyncio.Task[Any] | None = None) -> Live:
        body = await listed if listed is not None else await self._managed_apps()
        managed = {a["id"]: a for a in (body or {}).get("apps", []) if isinstance(a, dict) and "id" in a}
        missing = [i for i in desired.apps if i not in managed]
        limit = asyncio.Semaphore(8)

        async def one(app_id: str) -> dict[str, Any] | None:
            async with limit:
                found = await self._get(f"/v2/apps{app_id}")
            return found.get("app") if isinstance(found, dict) else None

        fetched = await asyncio.gather(*(one(i) for i in missing))
        apps: dict[str, dict[str, Any] | None] = {i: managed.get(i) for i in desired.apps}
        apps.update(zip(missing, fetched))
        previous_groups = (memory or {}).get("groups") or {}
        groups: dict[str, list[str] | None] = {}
        for group_id, group in desired.groups.items():
            if group.dependencies is not None or group_id in previous_groups:
                found = await self._get(f"/v2/groups{group_id}" if group_id != "/" else "/v2/groups")
                groups[group_id] = list(found.get("dependencies") or []) if isinstance(found, dict) else None
        return Live(managed, apps, groups)

    async def plan(self, ctx: SyncContext) -> Plan:
        desired = self.desired(ctx.tree)
        return diff(desired, await self.live(desired, ctx.memory, ctx.prefetched), ctx.memory,
                    prune=self.spec.prune, app_name=self.spec.app_name)

    async def verify(self, plan: Plan, ctx: SyncContext) -> Plan:
        """Read back after apply; the applied specs are the memory now, so only real drift remains."""
        desired = self.desired(ctx.tree)
        memory = plan.payload.memory() if isinstance(plan.payload, Payload) else None
        return diff(desired, await self.live(desired, memory), memory,
                    prune=self.spec.prune, app_name=self.spec.app_name)

    # ------------------------------------------------------------------ write
    async def apply(self, plan: Plan, ctx: SyncContext) -> ApplyReport:
        payload: Payload = plan.payload
        log = ctx.log or get_logger(app=ctx.app.name)
        deadline = time.monotonic() + self.spec.deploy_timeout
        writes: list[Write] = []
        for app_id in payload.puts:
            body = payload.desired.apps[app_id].spec
            deployment = await self._write("PUT", f"/v2/apps{app_id}", body, app_id, deadline, log,
                                           partial_update=False)
            writes.append(Write("app", app_id, deployment, payload.previous_versions.get(app_id)))
        for group_id, dependencies in payload.group_puts.items():
            body = {"id": group_id, "dependencies": dependencies}
            path = f"/v2/groups{group_id}" if group_id != "/" else "/v2/groups"
            writes.append(Write("group", group_id, await self._write("PUT", path, body, group_id, deadline, log)))
        for app_id in payload.deletes:
            writes.append(Write("delete", app_id, await self._write("DELETE", f"/v2/apps{app_id}", None, app_id,
                                                                    deadline, log)))
        running = await self._wait_gone({w.deployment for w in writes if w.deployment}, deadline)
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

    async def _write(
        self, method: str, path: str, body: Any, entity: str, deadline: float, log: Any,
        *, partial_update: bool | None = None,
    ) -> str | None:
        """One deployable call; a locked 409 waits for the listed deployments, then retries."""
        params: dict[str, str] = {}
        if partial_update is not None:
            params["partialUpdate"] = "true" if partial_update else "false"
        if self.spec.force:
            params["force"] = "true"
        for attempt in range(LOCK_RETRIES + 1):
            response = await self._call(method, path, json=body, params=params or None)
            if response.status_code in (200, 201, 202):
                result = self._json(response, f"{method} {path}") if response.content else {}
                return (result or {}).get("deploymentId") or response.headers.get("Marathon-Deployment-Id")
            if method == "DELETE" and response.status_code == 404:
                return None  # already gone
            locks = self._locks(response)
            if not locks:
                raise self._rejected(method, path, response, entity)
            if attempt == LOCK_RETRIES:
                break
            log.info("marathon app locked; waiting for its deployments", entity=entity, deployments=locks)
            still = await self._wait_gone(set(locks), deadline)
            if still:
                raise TargetError(
                    f"{entity} is locked by deployment(s) {', '.join(sorted(still))} still running after "
                    f"{self.spec.deploy_timeout:g} s (MARATHON_FORCE=true cancels them)",
                    problems=[Problem("locked by a running deployment", entity=entity)])
        raise TargetError(f"{entity} stayed locked after {LOCK_RETRIES} retries",
                          problems=[Problem("locked by running deployments", entity=entity)])

    def _locks(self, response: httpx.Response) -> list[str]:
        """Ids of the deployments in a locked 409; empty for any other answer (a duplicate is not a lock)."""
        if response.status_code != 409:
            return []
        try:
            body = response.json()
        except ValueError:
            return []
        deployments = body.get("deployments") if isinstance(body, dict) else None
        if not isinstance(deployments, list):
            return []
        return [str(d["id"]) for d in deployments if isinstance(d, dict) and "id" in d]

    def _rejected(self, method: str, path: str, response: httpx.Response, entity: str) -> TargetError:
        problems: list[Problem] = []
        try:
            body = response.json()
        except ValueError:
            body = None
        details = body.get("details") if isinstance(body, dict) else None
        for item in details if isinstance(details, list) else []:
            if isinstance(item, dict):
                errors = "; ".join(str(e) for e in item.get("errors") or [])
                problems.append(Problem(f"{item.get('path', '/')}: {errors}", entity=entity))
        if not problems:
            problems.append(Problem(error_detail(response), entity=entity))
        return TargetError(f"{method} {self.spec.url}{path}: {response.status_code} {error_detail(response)}",
                           problems=problems)

    async def _wait_gone(self, ids: set[str], deadline: float) -> set[str]:
        """Poll /v2/deployments until none of `ids` is listed; returns those still running at the deadline."""
        delay = POLL_FIRST
        while ids:
            body = await self._get("/v2/deployments")
            listed = {str(d.get("id")) for d in body or [] if isinstance(d, dict)}
            ids = ids & listed
            if not ids or time.monotonic() >= deadline:
                return ids
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, POLL_MAX)
        return set()

    async def _check(self, writes: list[Write], running: set[str]) -> dict[str, tuple[Write, list[str]]]:
        """Failed writes with their reasons: a deployment still running, or tasks short or unhealthy."""
        failed: dict[str, tuple[Write, list[str]]] = {}
        for write in writes:
            reasons: list[str] = []
            if write.deployment in running:
                reasons.append(f"deployment {write.deployment} did not finish within {self.spec.deploy_timeout:g} s")
            elif write.kind == "app":
                found = await self._get(f"/v2/apps{write.id}")
                app = found.get("app") if isinstance(found, dict) else None
                if app is None:
                    reasons.append("the app is missing after its deployment")
                else:
                    reasons.extend(health_problems(app))
                    if app.get("deployments"):
                        reasons.append("another deployment of the app is still running")
            elif write.kind == "delete" and await self._get(f"/v2/apps{write.id}") is not None:
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
        still = await self._wait_gone(started, time.monotonic() + self.spec.deploy_timeout)
        if still:
            notes.append(("rollback", f"rollback deployment(s) {', '.join(sorted(still))} still running"))
        return notes

    async def _undo(self, write: Write, running: bool) -> tuple[str, str | None]:
        if running and write.deployment:
            response = await self._call("DELETE", f"/v2/deployments/{write.deployment}")
            if response.status_code == 200:
                rollback = (self._json(response, "DELETE deployment") or {}).get("deploymentId")
                return f"deployment {write.deployment} cancelled, rollback deployment {rollback}", rollback
            if response.status_code != 404:
                status = f"{response.status_code} {error_detail(response)}"
                return f"DELETE /v2/deployments/{write.deployment}: {status}", None
        if write.kind != "app":
            return "nothing to roll back: the deployment had already ended", None
        if write.previous_version:
            body = {"version": write.previous_version}
            response = await self._call("PUT", f"/v2/apps{write.id}", json=body)
            what = f"restored version {write.previous_version}"
        else:
            response = await self._call("DELETE", f"/v2/apps{write.id}")
            what = "removed the new app"
        if response.status_code not in (200, 201):
            return f"{what} failed: {response.status_code} {error_detail(response)}", None
        return what, (self._json(response, "rollback") or {}).get("deploymentId")

    async def aclose(self) -> None:
        return None


def create(spec: Spec, deps: TargetDeps) -> MarathonTarget:
    return MarathonTarget(spec, deps)

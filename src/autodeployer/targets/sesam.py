"""Sesam node target: pipes, systems and node metadata through the whole-config API.

Desired state is ``node-metadata.conf.json`` plus every ``*.conf.json`` below ``pipes/`` and
``systems/`` at SYNC_ROOT. Live state is ``GET /config``. Both are compared entity by entity, keyed by
``_id``, after stripping the keys the node adds; only a non-empty diff is uploaded, with one
``PUT /config`` of the whole desired configuration, then read back and verified.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import SecretStr

from ..config.variables import EnvReader, Frozen, StrictBool, Variable, strip_bearer, validate_model
from ..errors import ConfigError, Refused, TargetError
from ..gcpause import gc_paused
from ..jsondiff import JSONProblem, loads_strict, unified
from ..model import Action, ApplyReport, Change, Plan, Problem, SourceFile, Tree
from .base import SyncContext, TargetDeps
from .transport import error_detail, request

KIND = "sesam"
DEFAULT_URL = "http://sesam-node:9042/api"
SECRET_KEYS: tuple[str, ...] = ("jwt",)
VARIABLES: tuple[Variable, ...] = (
    Variable("SESAM_API_URL", DEFAULT_URL, "Sesam node API base URL."),
    Variable("JWT", None, "JSON Web Token for the Sesam node (required for the sesam target).", True),
    Variable("SESAM_FORCE", "false", "Upload with force=true (apply despite validation errors)."),
    Variable("SELF_ID", None, "_id of the deployer's own system; a config without it is refused."),
    Variable("SESAM_TIMEOUT", "600", "Seconds one request to the node (read or upload) may take."),
)

METADATA_FILE = "node-metadata.conf.json"
CONFIG_DIRS = ("pipes/", "systems/")
# Keys the node adds at the top level of an entity; never part of the desired state.
NODE_KEYS = frozenset({"$audit", "$principals-from-user", "_updated", "_deleted", "_hash", "_previous", "_ts"})
MAX_ENTITY_FILE_BYTES = 10 * 1024 * 1024
_SECRET_REF = re.compile(r"\$SECRET\(")


class Spec(Frozen):
    kind: Literal["sesam"] = "sesam"
    api_url: str = DEFAULT_URL
    jwt: SecretStr
    force: StrictBool = False
    self_id: str | None = None
    timeout: float = 600.0
    verify_tls: StrictBool = True


def normalise_url(value: str) -> str:
    """Scheme added, no trailing slash, exactly one trailing /api."""
    url = value.strip()
    if "://" not in url:
        url = "https://" + url
    url = url.rstrip("/")
    if not url.endswith("/api"):
        url += "/api"
    return url


def spec_from_env(env: EnvReader, app_name: str | None = None) -> Spec:
    jwt = env.secret("JWT")
    if jwt is None:
        raise ConfigError("JWT is required: the Sesam node's API token")
    return Spec(
        api_url=normalise_url(env.str("SESAM_API_URL") or DEFAULT_URL),
        jwt=SecretStr(strip_bearer(jwt.get_secret_value())),
        force=env.bool("SESAM_FORCE"),
        self_id=env.str("SELF_ID"),
        timeout=env.number("SESAM_TIMEOUT", minimum=1) or 600.0,
        verify_tls=env.bool("VERIFY_TLS"),
    )


def spec_from_yaml(data: dict[str, Any], where: str, app_name: str | None = None) -> Spec:
    data = dict(data)
    data["api_url"] = normalise_url(str(data.get("api_url", DEFAULT_URL)))
    if data.get("jwt"):
        data["jwt"] = strip_bearer(str(data["jwt"]))
    spec: Spec = validate_model(Spec, data, where)
    return spec


# --------------------------------------------------------------------------- desired state
@dataclass
class DesiredConfig:
    entities: dict[str, dict[str, Any]]  # by _id, metadata included when managed
    files: dict[str, str]  # _id -> file it came from
    metadata_managed: bool
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def is_config_path(path: str) -> bool:
    return path == METADATA_FILE or (path.startswith(CONFIG_DIRS) and path.endswith(".conf.json"))


def strip_node_keys(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entity.items() if k not in NODE_KEYS}


def _contains_secret_ref(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SECRET_REF.search(value))
    if isinstance(value, dict):
        return any(_contains_secret_ref(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_secret_ref(v) for v in value)
    return False


def _check_entity(
    entity: Any, file: str, index: int, problems: list[Problem], may_hold_secrets: bool = True
) -> dict[str, Any] | None:
    label = f"entity #{index + 1}"
    if not isinstance(entity, dict):
        problems.append(Problem(f"{label} is not a JSON object", file=file))
        return None
    _id = entity.get("_id")
    if not isinstance(_id, str) or not _id.strip():
        problems.append(Problem(f"{label} has no _id (a non-empty string is required)", file=file))
        return None
    kind = entity.get("type")
    if not isinstance(kind, str) or not kind:
        problems.append(Problem("has no type", file=file, entity=_id))
        return None
    if kind not in ("pipe", "metadata") and not kind.startswith("system:"):
        problems.append(Problem(f"type {kind!r} is not pipe, metadata or system:<kind>", file=file, entity=_id))
        return None
    if "/" in _id:
        problems.append(Problem("_id must not contain '/'", file=file, entity=_id))
        return None
    if may_hold_secrets and not kind.startswith("system:") and _contains_secret_ref(entity):
        problems.append(Problem("$SECRET(...) is only allowed in systems", file=file, entity=_id))
        return None
    return strip_node_keys(entity)


@dataclass(frozen=True)
class ParsedFile:
    """What one file contributes, before the checks across files. A pure function of path and bytes."""

    entities: tuple[dict[str, Any], ...]
    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()


# path -> (the bytes it was parsed from, SYNC_ROOT, the result): a new commit re-parses only what changed
ParseMemo = dict[str, tuple[bytes, str, ParsedFile]]


def parse_file(path: str, file: SourceFile, shown: str) -> ParsedFile:
    """Read one config file; `shown` is its name in messages (SYNC_ROOT included)."""
    if ".." in path.split("/"):
        return ParsedFile((), (Problem("path leaves SYNC_ROOT", file=shown),))
    if file.is_symlink:
        return ParsedFile((), (Problem("is a symbolic link; links are not followed", file=shown),))
    if file.oversize or file.size > MAX_ENTITY_FILE_BYTES:
        too_big = Problem(f"is {file.size} bytes; the limit is {MAX_ENTITY_FILE_BYTES} bytes", file=shown)
        return ParsedFile((), (too_big,))
    try:
        doc = loads_strict(file.data)
    except JSONProblem as exc:
        return ParsedFile((), (Problem(str(exc), file=shown),))
    if isinstance(doc, dict):
        items = [doc]
    elif isinstance(doc, list):
        items = doc
    else:
        return ParsedFile((), (Problem("expected an entity object or an array of entities", file=shown),))
    problems: list[Problem] = []
    entities: list[dict[str, Any]] = []
    warnings: list[str] = []
    may_hold_secrets = b"$SECRET(" in file.data  # walking every value is only worth it then
    for index, item in enumerate(items):
        entity = _check_entity(item, shown, index, problems, may_hold_secrets)
        if entity is None:
            continue
        if path == METADATA_FILE and entity["type"] != "metadata":
            problems.append(Problem(f"{METADATA_FILE} must hold the metadata entity", file=shown, entity=entity["_id"]))
            continue
        entities.append(entity)
        stem = path.rsplit("/", 1)[-1].removesuffix(".conf.json")
        if len(items) == 1 and path != METADATA_FILE and stem != entity["_id"]:
            warnings.append(f"{shown}: file name does not match _id {entity['_id']!r}")
    return ParsedFile(tuple(entities), tuple(problems), tuple(warnings))


def parse_desired(tree: Tree, self_id: str | None = None, memo: ParseMemo | None = None) -> DesiredConfig:
    """Read and validate the tree; raise Refused listing every problem found.

    With `memo` (filled and pruned here), files whose bytes did not change since the last call are
    not parsed again.
    """
    problems: list[Problem] = []
    entities: dict[str, dict[str, Any]] = {}
    files: dict[str, str] = {}
    warnings: list[str] = []
    ignored: list[str] = []
    metadata: list[tuple[str, str]] = []  # (_id, file)
    seen: ParseMemo = {}
    with gc_paused():
        for path in sorted(tree.files):
            if not is_config_path(path):
                ignored.append(path)
                continue
            file = tree.files[path]
            cached = memo.get(path) if memo is not None else None
            if cached is not None and cached[1] == tree.sync_root and cached[0] == file.data and not file.oversize:
                parsed = cached[2]
            else:
                shown = f"{tree.sync_root}/{path}" if tree.sync_root else path
                parsed = parse_file(path, file, shown)
            seen[path] = (file.data, tree.sync_root, parsed)
            problems.extend(parsed.problems)
            warnings.extend(parsed.warnings)
            for entity in parsed.entities:
                _id, shown = entity["_id"], (f"{tree.sync_root}/{path}" if tree.sync_root else path)
                if _id in files:
                    problems.append(Problem(f"_id defined twice: in {files[_id]} and in {shown}", entity=_id))
                    continue
                if entity["type"] == "metadata":
                    metadata.append((_id, shown))
                entities[_id] = entity
                files[_id] = shown
    if memo is not None:
        memo.clear()
        memo.update(seen)
    if len(metadata) > 1:
        where = "; ".join(f"{_id} in {file}" for _id, file in metadata)
        problems.append(Problem(f"more than one metadata entity: {where}", file=metadata[1][1]))
    if self_id and not problems:
        own = entities.get(self_id)
        if own is None or not str(own.get("type", "")).startswith("system:"):
            problems.append(
                Problem(
                    "the deployer's own system (SELF_ID) is missing from the configuration in Git; "
                    "uploading it would remove the deployer from the node",
                    entity=self_id,
                )
            )
    if problems:
        raise Refused(f"configuration at {tree.revision[:12]} is not deployable", problems)
    notices = []
    if ignored:
        shown_ignored = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        notices.append(f"ignored {len(ignored)} file(s) that are not Sesam config: {shown_ignored}")
    return DesiredConfig(
        entities=entities,
        files=files,
        metadata_managed=bool(metadata),
        warnings=warnings,
        notices=notices,
    )


# --------------------------------------------------------------------------- diff
def _kind(entity: dict[str, Any]) -> str:
    return str(entity.get("type", "?"))


def diff(desired: DesiredConfig, live: list[dict[str, Any]]) -> Plan:
    """Semantic diff keyed by _id. Unmanaged metadata is carried over untouched."""
    with gc_paused():
        return _diff(desired, live)


def _diff(desired: DesiredConfig, live: list[dict[str, Any]]) -> Plan:
    live_by_id: dict[str, dict[str, Any]] = {}
    live_metadata: dict[str, Any] | None = None
    for raw in live:
        entity = strip_node_keys(raw)
        if entity.get("type") == "metadata":
            live_metadata = entity
            if not desired.metadata_managed:
                continue
        live_by_id[str(entity.get("_id"))] = entity
    changes: list[Change] = []
    for _id in sorted(desired.entities):
        want = desired.entities[_id]
        have = live_by_id.get(_id)
        if have is None:
            changes.append(Change(Action.ADD, _id, _kind(want), unified(None, want, _id)))
        elif have != want:
            changes.append(Change(Action.CHANGE, _id, _kind(want), unified(have, want, _id)))
    for _id in sorted(set(live_by_id) - set(desired.entities)):
        have = live_by_id[_id]
        changes.append(Change(Action.REMOVE, _id, _kind(have), unified(have, None, _id)))
    payload = [desired.entities[_id] for _id in sorted(desired.entities)]
    if not desired.metadata_managed and live_metadata is not None:
        payload.insert(0, live_metadata)  # replace-all must not reset metadata we do not manage
    managed_live = [e for e in live_by_id.values() if e.get("type") != "metadata"]
    managed_desired = [e for e in desired.entities.values() if e.get("type") != "metadata"]
    return Plan(
        changes=changes,
        warnings=list(desired.warnings),
        notices=list(desired.notices),
        payload=payload,
        desired_count=len(desired.entities),
        live_count=len(live_by_id),
        empties_target=bool(managed_live) and not managed_desired,
    )


# --------------------------------------------------------------------------- the target
def format_validation_items(items: Any) -> tuple[list[str], list[str]]:
    """Split a `validation_errors` list into (errors, warnings), each '<_id>: <elements>: <msg>'."""
    errors: list[str] = []
    warnings: list[str] = []
    if not isinstance(items, list):
        return errors, warnings
    for item in items:
        if not isinstance(item, dict):
            continue
        posted = item.get("posted-config")
        _id = posted.get("_id", "?") if isinstance(posted, dict) else "?"
        for err in item.get("config-errors") or []:
            if not isinstance(err, dict):
                continue
            line = f"{_id}: {err.get('elements', '$')}: {err.get('msg', '')}"
            (errors if err.get("level", "error") == "error" else warnings).append(line)
    return errors, warnings


class SesamTarget:
    kind = KIND

    def __init__(self, spec: Spec, deps: TargetDeps) -> None:
        self.spec = spec
        self._http = deps.http
        self._headers = {
            "Authorization": f"Bearer {spec.jwt.get_secret_value()}",
            "Accept": "application/json",
        }
        self._cache: tuple[str, str | None, DesiredConfig] | None = None
        self._memo: ParseMemo = {}

    def desired(self, tree: Tree) -> DesiredConfig:
        """Parsed desired state, cached per tree (drift checks) and per file (a new commit parses what changed)."""
        key = (tree.tree_id, self.spec.self_id)
        if self._cache and self._cache[:2] == key and tree.tree_id:
            return self._cache[2]
        desired = parse_desired(tree, self.spec.self_id, self._memo)
        self._cache = (key[0], key[1], desired)
        return desired

    def prefetch(self) -> asyncio.Task[list[dict[str, Any]]]:
        """The live configuration does not depend on Git: read it while Git is fetched and parsed."""
        return asyncio.get_running_loop().create_task(self.live())

    async def live(self) -> list[dict[str, Any]]:
        url = f"{self.spec.api_url}/config"
        # Reads are quick on a healthy node: never wait longer than a minute, however long uploads may take.
        response = await request(self._http, "GET", url, headers=self._headers, timeout=min(60.0, self.spec.timeout))
        self._check_auth(response, "GET", url)
        if response.status_code != 200:
            raise TargetError(f"GET {url}: {response.status_code} {error_detail(response)}")
        try:
            with gc_paused():
                body = response.json()
        except ValueError:
            raise TargetError(f"GET {url}: the node answered with something that is not JSON") from None
        if not isinstance(body, list):
            raise TargetError(f"GET {url}: expected a JSON array of entities")
        return [e for e in body if isinstance(e, dict)]

    async def plan(self, ctx: SyncContext) -> Plan:
        desired = self.desired(ctx.tree)
        live = await ctx.prefetched if ctx.prefetched is not None else await self.live()
        return diff(desired, live)

    async def apply(self, plan: Plan, ctx: SyncContext) -> ApplyReport:
        force = "true" if self.spec.force else "false"
        url = f"{self.spec.api_url}/config?force={force}"
        response = await request(
            self._http, "PUT", url, json=plan.payload, headers=self._headers, timeout=self.spec.timeout
        )
        self._check_auth(response, "PUT", url)
        try:
            body = response.json()
        except ValueError:
            body = None
        items = body.get("validation_errors") if isinstance(body, dict) else None
        errors, warnings = format_validation_items(items)
        if response.status_code == 400:
            problems = [Problem(e) for e in errors] or [Problem(error_detail(response))]
            raise TargetError(
                f"the node rejected the configuration ({len(errors)} validation error(s))", problems=problems
            )
        if response.status_code != 200:
            raise TargetError(f"PUT {url.split('?')[0]}: {response.status_code} {error_detail(response)}")
        report = ApplyReport(warnings=[f"warning: {w}" for w in warnings])
        if errors:
            report.warnings += [f"applied with error: {e}" for e in errors]
        report.details["validation_items"] = len(errors) + len(warnings)
        return report

    async def verify(self, plan: Plan, ctx: SyncContext) -> Plan:
        return diff(self.desired(ctx.tree), await self.live())

    def _check_auth(self, response: Any, method: str, url: str) -> None:
        if response.status_code in (401, 403):
            raise TargetError(
                f"{method} {url.split('?')[0]}: authentication failed ({response.status_code}); check JWT"
            )

    async def aclose(self) -> None:
        return None


def create(spec: Spec, deps: TargetDeps) -> SesamTarget:
    return SesamTarget(spec, deps)

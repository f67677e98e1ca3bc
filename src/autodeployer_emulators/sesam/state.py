"""The emulated Sesam node's state and rules: entities, validation, pumps, env, secrets.

No HTTP here: :class:`SesamState` is what the routes read and change under its one lock, and what a
test steers in-process (``entities()``, ``fail_next()``, ``expire_token()`` ...).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import re
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

DEFAULT_GROUP = "default"
#: Keys the node adds at the top level of an entity; stripped from uploads (section 4).
NODE_KEYS = frozenset(
    {"$audit", "$principals-from-user", "_updated", "_deleted", "_hash", "_previous", "_ts"}
)
DEFAULT_METADATA: dict[str, Any] = {"_id": "node", "type": "metadata"}
ENV_REF = re.compile(r"\$ENV\(([^()\s]+)\)")
SECRET_REF = re.compile(r"\$SECRET\(([^()\s]+)\)")
PRIVILEGED_PATH = re.compile(r"/api/(env|secrets|systems/[^/]+/secrets)(/[^/]*)?")
MICROSERVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,62}")
JSON_TYPES = frozenset({"application/json", "text/json"})
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed"})
#: Paths answered without a token (liveness probes).
OPEN_PATHS = frozenset({"/api/health"})
#: Operations the emulated pumps accept (``POST /api/pipes/{id}/pump``, form field ``operation``).
#: The names are sesamclient 1.2.6's (``Pump.start``, ``reset_tracking``, ``update_last_seen`` ...).
PUMP_OPERATIONS = (
    "enable", "disable", "start", "stop", "pump", "reset", "update-last-seen", "reset-failures",
    "reset-tracking", "set-tracking-to-start", "set-last-seen-to-end", "start-rescan",
    "reset-rescan",
)
#: A pipe ``metadata`` key that makes every run of the pipe fail: ``true`` or the error message.
#: It travels with the pipe's configuration, so a test can commit a pipe that breaks on the node.
FAIL_RUNS_KEY = "emulator-fail-runs"
#: Seconds between scheduled runs when the pipe's ``pump.schedule_interval`` does not say.
DEFAULT_SCHEDULE_INTERVAL = 30.0
#: Pipes a real node has besides the user's: a ``system:`` pipe (listed only with
#: ``include-internal-pipes=true``), a search-index pipe (``origin: search``) whose runs fail, and a
#: replica pipe (``:singlenode`` id) that stays in ``Deploying``: any loop that waits for deploys or
#: judges health without filtering non-user pipes (reference section 8) hangs or misjudges here.
SYSTEM_PIPES: tuple[dict[str, Any], ...] = (
    {"_id": "system:config:node", "type": "pipe", "metadata": {"origin": "system"}},
    {"_id": "search-index-node", "type": "pipe",
     "metadata": {"origin": "search", FAIL_RUNS_KEY: "search index is rebuilding"}},
    {"_id": "replica-node:singlenode", "type": "pipe", "metadata": {"origin": "replica"}},
)
STUCK_DEPLOYING = frozenset({"replica-node:singlenode"})
MAX_UPLOAD_PART = 512 * 1024 * 1024

Level = Literal["error", "warning"]
Kind = Literal["pipe", "system", "metadata"]


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def json_path(parent: str, key: str | int) -> str:
    """Extend a JSONPath the way the node reports ``elements`` (``$['sink']['url']``, ``[0]``)."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"{parent}['{escaped}']"


def iter_strings(value: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """Yield ``(path, text)`` for every string value of a parsed JSON document."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from iter_strings(item, json_path(path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from iter_strings(item, json_path(path, index))


def _env_text(value: Any) -> str:
    """Render a variable inside a longer string; non-strings as JSON (``true``, ``42``)."""
    return value if isinstance(value, str) else json.dumps(value)


def expand_env(value: Any, env: Mapping[str, Any]) -> Any:
    """Return a copy with ``$ENV(name)`` replaced; a whole-string reference keeps the value's type.

    Unknown names are left as written, so the effective config shows what is missing.
    """
    if isinstance(value, str):
        whole = ENV_REF.fullmatch(value)
        if whole and whole.group(1) in env:
            return copy.deepcopy(env[whole.group(1)])
        return ENV_REF.sub(
            lambda m: _env_text(env[m.group(1)]) if m.group(1) in env else m.group(0), value
        )
    if isinstance(value, dict):
        return {key: expand_env(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, env) for item in value]
    return value


def strip_node_keys(entity: Mapping[str, Any]) -> dict[str, Any]:
    """Drop node-added keys at the top level only (nested ``_id`` in DTL is user data)."""
    return {key: value for key, value in entity.items() if key not in NODE_KEYS}


def entity_kind(type_value: Any) -> Kind | None:
    """Classify an entity by its ``type`` (``pipe``, ``metadata`` or ``system:<kind>``)."""
    if type_value == "pipe":
        return "pipe"
    if type_value == "metadata":
        return "metadata"
    if isinstance(type_value, str) and type_value.startswith("system:") and len(type_value) > 7:
        return "system"
    return None


def jwt_claims(token: str) -> dict[str, Any] | None:
    """Decode a JWT payload without verifying it; ``None`` for an opaque (non-JWT) token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expired(claims: Mapping[str, Any] | None, now: float) -> bool:
    """True when the claims carry a numeric ``exp`` that has passed."""
    if not claims:
        return False
    exp = claims.get("exp")
    return isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp <= now


def has_admin(claims: Mapping[str, Any] | None) -> bool:
    """True when the ``principals`` claim (keyed by subscription id, or a list) has group:Admin."""
    if not claims:
        return False
    principals = claims.get("principals")
    groups: list[Any] = []
    if isinstance(principals, dict):
        for value in principals.values():
            groups.extend(value if isinstance(value, list) else [value])
    elif isinstance(principals, list):
        groups = principals
    return "group:Admin" in groups


def parse_bool_param(raw: str | None, name: str) -> bool:
    """Parse ``true``/``false`` in any letter case; absent means false; anything else is refused."""
    if raw is None:
        return False
    lowered = raw.strip().lower()
    if lowered == "true":
        return True
    if lowered in ("false", ""):
        return False
    raise BodyError(f"query parameter {name!r} must be true or false, got {raw!r}")


def dump_json(value: Any) -> bytes:
    """The export format: 2-space indent, UTF-8, trailing newline."""
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def content_hash(entity: Mapping[str, Any]) -> str:
    """A stable hash of the posted entity, independent of key order."""
    canonical = json.dumps(entity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def transit_ts(moment: datetime) -> str:
    """Transit-encoded timestamp as the node writes it in ``$audit`` (``~t2024-...Z``)."""
    return "~t" + moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso(moment: datetime | None) -> str | None:
    """A runtime timestamp: ISO 8601 in UTC with ``Z``, or null."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _source_datasets(pipe: Mapping[str, Any]) -> list[str]:
    """Datasets a pipe reads (``source.dataset`` or ``source.datasets``, merge ids stripped)."""
    source = pipe.get("source")
    if not isinstance(source, dict):
        return []
    found = source.get("datasets", source.get("dataset"))
    names = found if isinstance(found, list) else [found]
    return [n.split(" ")[0] for n in names if isinstance(n, str) and n]


def _sink_dataset(pipe: Mapping[str, Any]) -> str:
    """The dataset a pipe writes: ``sink.dataset``, else the pipe's own id (Sesam's default)."""
    sink = pipe.get("sink")
    named = sink.get("dataset") if isinstance(sink, dict) else None
    return named if isinstance(named, str) and named else str(pipe.get("_id"))


def _schedule_interval(pipe: Mapping[str, Any]) -> float:
    pump = pipe.get("pump")
    value = pump.get("schedule_interval") if isinstance(pump, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_SCHEDULE_INTERVAL


# --------------------------------------------------------------------------------------------
# Upload parsing and validation
# --------------------------------------------------------------------------------------------


class BodyError(ValueError):
    """The request as a whole cannot be used (unparsable body, bad parameter): always 400."""


_ABSENT: Any = object()


@dataclass(frozen=True)
class Posted:
    """One item of an upload: a parsed JSON value, or a zip entry that did not parse."""

    value: Any
    source: str | None = None
    parse_error: str | None = None
    raw: bytes | None = None


@dataclass(frozen=True)
class ConfigError:
    """One ``config-errors`` element of a validation item."""

    elements: str
    level: Level
    msg: str

    def to_json(self) -> dict[str, Any]:
        return {"elements": self.elements, "level": self.level, "msg": self.msg}


@dataclass
class Checked:
    """An upload item after validation; ``refused`` items cannot be stored even with force."""

    posted: Posted
    entity: dict[str, Any] | None
    kind: Kind | None = None
    errors: list[ConfigError] = field(default_factory=list)
    refused: bool = False

    @property
    def entity_id(self) -> str:
        assert self.entity is not None
        return str(self.entity["_id"])

    @property
    def is_valid(self) -> bool:
        return not any(error.level == "error" for error in self.errors)

    def error(self, elements: str, msg: str, *, refuse: bool = False) -> None:
        self.errors.append(ConfigError(elements, "error", msg))
        self.refused = self.refused or refuse

    def warn(self, elements: str, msg: str) -> None:
        self.errors.append(ConfigError(elements, "warning", msg))

    def report_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {}
        if self.posted.value is not _ABSENT:
            item["posted-config"] = self.posted.value
        item["config-errors"] = [error.to_json() for error in self.errors]
        item["is-valid-config"] = self.is_valid
        return item


@dataclass(frozen=True)
class CheckContext:
    """What validation needs to know about the node at upload time."""

    force: bool
    env_names: frozenset[str]
    secret_names: frozenset[str]
    system_secret_names: Mapping[str, frozenset[str]]
    taken_ids: Mapping[str, str] = field(default_factory=dict)  # id -> group owning it
    allowed_kinds: frozenset[str] = frozenset({"pipe", "system", "metadata"})
    keep_unknown_files: bool = False
    refuse_unknown_env: bool = True


@dataclass
class Plan:
    """The outcome of validating an upload: what would be stored, and what to report."""

    checked: list[Checked]
    accepted: list[Checked]
    unknown_files: dict[str, bytes]

    @property
    def has_errors(self) -> bool:
        return any(not item.is_valid for item in self.checked)

    @property
    def report(self) -> list[dict[str, Any]]:
        return [item.report_item() for item in self.checked if item.errors]


def parse_json_items(data: bytes) -> list[Posted]:
    """A raw JSON body: one entity object, or an array of entities."""
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except ValueError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from exc
    if isinstance(value, dict):
        return [Posted(value)]
    if isinstance(value, list):
        return [Posted(item) for item in value]
    raise BodyError("body must be a JSON object or an array of objects")


def parse_zip_items(data: bytes) -> list[Posted]:
    """A zip body: every file entry is one entity, classified later by ``type``, not by path."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BodyError(f"body is not a valid zip archive: {exc}") from exc
    items: list[Posted] = []
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            try:
                raw = archive.read(info)
            except (NotImplementedError, zipfile.BadZipFile, RuntimeError) as exc:
                raise BodyError(f"cannot read zip entry {info.filename!r}: {exc}") from exc
            try:
                items.append(Posted(json.loads(raw.decode("utf-8-sig")), source=info.filename))
            except ValueError as exc:
                items.append(Posted(_ABSENT, info.filename, f"not a JSON document: {exc}", raw))
    return items


def parse_payload(data: bytes, content_type: str) -> list[Posted]:
    """Dispatch on the content type; sniff the zip signature when the type says neither."""
    if content_type in ZIP_TYPES:
        return parse_zip_items(data)
    if content_type not in JSON_TYPES and data[:2] == b"PK":
        return parse_zip_items(data)
    return parse_json_items(data)


def _check_references(item: Checked, ctx: CheckContext) -> None:
    """Rules 5 and section 9: ``$SECRET`` only in systems; unknown ``$ENV``/``$SECRET`` names."""
    assert item.entity is not None
    raw_id = item.entity.get("_id")
    system_id = raw_id if isinstance(raw_id, str) else ""
    known_secrets = ctx.secret_names | ctx.system_secret_names.get(system_id, frozenset())
    for path, text in iter_strings(item.entity):
        for name in SECRET_REF.findall(text):
            if item.kind != "system":
                item.error(path, f"$SECRET({name}) is only allowed in system entities")
            elif name not in known_secrets:
                item.warn(path, f"unknown secret '{name}'")
        for name in ENV_REF.findall(text):
            if name not in ctx.env_names:
                msg = f"unknown environment variable '{name}'"
                if ctx.force or not ctx.refuse_unknown_env:
                    item.warn(path, msg)
                else:
                    item.error(path, msg)


def _check_microservice(item: Checked) -> None:
    """Rules 6 and 7: id usable as a DNS name; ``docker.image`` and ``docker.port`` present."""
    assert item.entity is not None
    entity_id = item.entity.get("_id")
    if isinstance(entity_id, str):
        if not MICROSERVICE_ID.fullmatch(entity_id):
            item.error(
                "$['_id']",
                "microservice ids must match [A-Za-z0-9][A-Za-z0-9_-]* with 2 to 63 characters",
            )
        elif entity_id != entity_id.lower():
            item.warn("$['_id']", "microservice ids should be lower case (used as a DNS name)")
    docker = item.entity.get("docker")
    if not isinstance(docker, dict):
        item.error("$['docker']", "system:microservice needs a 'docker' object")
        return
    for key in ("image", "port"):
        if docker.get(key) in (None, ""):
            item.error(json_path("$['docker']", key), f"system:microservice needs docker.{key}")


def check_item(posted: Posted, ctx: CheckContext) -> Checked:
    """Apply the per-entity rules (1, 2, 3, 5, 6, 7, 9, 10) to one upload item."""
    if posted.parse_error is not None:
        item = Checked(posted, None)
        item.error("$", f"{posted.source}: {posted.parse_error}", refuse=True)
        return item
    if not isinstance(posted.value, dict):
        item = Checked(posted, None)
        item.error("$", "entity must be a JSON object", refuse=True)
        return item
    entity = strip_node_keys(posted.value)
    item = Checked(posted, entity, entity_kind(entity.get("type")))
    entity_id = entity.get("_id")
    if not isinstance(entity_id, str) or not entity_id:
        item.error("$['_id']", "'_id' is required and must be a non-empty string", refuse=True)
    else:
        if "/" in entity_id:
            item.error("$['_id']", "'_id' must not contain '/'", refuse=True)
        if entity_id.startswith("system:"):
            item.error("$['_id']", "ids starting with 'system:' are reserved", refuse=True)
    if item.kind is None:
        item.error(
            "$['type']", "'type' must be 'pipe', 'metadata' or 'system:<kind>'", refuse=True
        )
    elif item.kind not in ctx.allowed_kinds:
        item.error("$['type']", f"entities of type {entity['type']!r} are not allowed here",
                   refuse=True)
    if entity.get("type") == "system:microservice":
        _check_microservice(item)
    _check_references(item, ctx)
    return item


def make_plan(items: Sequence[Posted], ctx: CheckContext) -> Plan:
    """Validate a whole upload: per-item rules, then uniqueness (4) and one metadata entity (8).

    Duplicates are reported on every occurrence after the first; the last occurrence wins when
    the upload is forced.
    """
    unknown = {
        f"unknown/{p.source}": p.raw or b""
        for p in items
        if p.parse_error is not None and ctx.keep_unknown_files and p.source
    }
    checked = [check_item(p, ctx) for p in items if not (p.parse_error and ctx.keep_unknown_files)]
    first_position: dict[str, int] = {}
    for position, item in enumerate(checked):
        if item.refused:
            continue
        entity_id = item.entity_id
        if entity_id in ctx.taken_ids:
            item.error("$['_id']", f"'_id' {entity_id!r} already exists in config group "
                       f"{ctx.taken_ids[entity_id]!r}", refuse=True)
        elif entity_id in first_position:
            item.error("$['_id']", f"duplicate '_id' {entity_id!r} "
                       f"(first at position {first_position[entity_id]})")
        else:
            first_position[entity_id] = position
    survivors: dict[str, Checked] = {}
    for item in checked:
        if not item.refused:
            survivors[item.entity_id] = item
    metadata_seen = False
    for entity_id, item in list(survivors.items()):
        if item.kind != "metadata":
            continue
        if metadata_seen:
            item.error("$", "at most one metadata entity is allowed", refuse=True)
            del survivors[entity_id]
        metadata_seen = True
    return Plan(checked, list(survivors.values()), unknown)


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who wrote an entity, as recorded in ``$audit``."""

    user_id: str | None = None
    email: str | None = None
    remote_addr: str | None = None
    api_token_id: str | None = None

    @classmethod
    def from_request(cls, token: str | None, remote_addr: str | None) -> Actor:
        claims = jwt_claims(token) if token else None
        claims = claims or {}
        return cls(
            user_id=claims.get("user_id") or claims.get("sub"),
            email=claims.get("email"),
            remote_addr=remote_addr,
            api_token_id=claims.get("api_token_id") or claims.get("jti"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "email": self.email,
            "remote_addr": self.remote_addr,
            "api_token_id": self.api_token_id,
        }


@dataclass
class Stored:
    """One stored entity: the config as posted plus the node's bookkeeping."""

    entity: dict[str, Any]
    kind: Kind
    group: str
    errors: list[ConfigError]
    audit: dict[str, Any]
    ts: int
    disabled: bool = False
    pump: PumpState | None = None

    @property
    def entity_id(self) -> str:
        return str(self.entity["_id"])

    @property
    def is_valid(self) -> bool:
        return not any(error.level == "error" for error in self.errors)


@dataclass
class PumpState:
    """What a pipe's pump reports about its runs (``runtime`` of the pump and of the pipe)."""

    last_started: datetime | None = None
    last_run: datetime | None = None
    success: bool | None = None
    last_message: str | None = None
    last_error: str | None = None
    processed: int = 0
    runs: int = 0
    last_seen: str | None = None
    running: bool = False


@dataclass(frozen=True)
class HistoryRecord:
    """One version of an entity, as ``GET /api/config-history/entity`` lists it."""

    seq: int
    entity_id: str
    ts: int
    deleted: bool
    original: dict[str, Any]


@dataclass
class RequestRecord:
    """One request seen by the emulator; ``status`` is filled in when the response starts."""

    method: str
    path: str
    query: str
    status: int = 0


@dataclass
class _Failure:
    status: int
    remaining: int
    path_prefix: str | None


def _matches(path: str, prefix: str | None) -> bool:
    return prefix is None or path.startswith(prefix)


class SesamState:
    """In-memory Sesam node: the model, its rules and the test-side controls (no HTTP)."""

    def __init__(self, jwt: str | None = None, *, clock: Callable[[], datetime] | None = None,
                 system_pipes: bool = True):
        self._initial_jwt = jwt
        self._with_system_pipes = system_pipes
        self._lock = threading.Lock()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._last_tick = datetime.min.replace(tzinfo=UTC)
        self._started_at = self._clock()
        self._started_monotonic = time.monotonic()
        self._init_state()

    def _init_state(self) -> None:
        """Everything ``reset()`` restores: node state, request log, controls and switches."""
        self._jwt = self._initial_jwt
        self._entities: dict[str, Stored] = {}
        self._env: dict[str, Any] = {}
        self._secrets: dict[str, str] = {}
        self._system_secrets: dict[str, dict[str, str]] = {}
        self._unknown_files: dict[str, bytes] = {}  # from the last upload; replaced by the next
        self._pinned_unknown: dict[str, bytes] = {}  # node-side content that uploads never clear
        self._requests: list[RequestRecord] = []
        self._put_count = 0
        self._failures: list[_Failure] = []
        self._delays: dict[str | None, float] = {}
        self._token_expired = False
        self._deploy_hold = 0.0
        self._deploying_until = 0.0
        self._pump_log: list[tuple[str, str]] = []
        self._history: list[HistoryRecord] = []
        self._failing_runs: dict[str, str] = {}
        #: Refuse (400) an upload naming an unknown ``$ENV`` variable; with False it is stored and
        #: reported as a warning. What a real node does is unknown (reference section 3), so the
        #: product must check ``$ENV`` itself and is tested under both settings.
        self.refuse_unknown_env = True
        #: Run a pipe's pump once whenever its configuration changes (a node schedules a run soon
        #: after a deploy), so ``last-run``/``success`` describe the deployed configuration.
        self.run_on_deploy = True
        self._system_pipes: dict[str, Stored] = {}
        if self._with_system_pipes:
            for entity in SYSTEM_PIPES:
                stored = self._new_stored(copy.deepcopy(entity), "pipe", DEFAULT_GROUP, [], None,
                                          Actor(user_id="node"))
                self._system_pipes[stored.entity_id] = stored
                self._run_pump(stored)
        self._metadata = self._new_stored(dict(DEFAULT_METADATA), "metadata", DEFAULT_GROUP, [],
                                          None, Actor(user_id="node"))
        #: Section 6 switch: a ``PUT /api/config`` without metadata keeps the previous metadata.
        self.keep_metadata_on_replace = False
        #: Include ``$audit`` in every HTTP view of ``config.original`` (export, pipes, metadata).
        self.audit_in_export = True
        #: Also add ``_ts`` and ``_hash`` to exported entities.
        self.add_ts_and_hash = False
        #: Keep non-JSON zip entries and export them under ``unknown/`` instead of refusing them.
        self.keep_unknown_files = False
        #: Require ``group:Admin`` in the token's principals for env and secrets endpoints.
        self.require_admin = False
        #: Reported by ``GET /api/`` as ``status.developer_mode``.
        self.developer_mode = True
        #: ``GET /api/health`` answers 503 when false.
        self.healthy = True

    def reset(self) -> None:
        """Back to a fresh node (as constructed), so one served emulator can host many tests."""
        with self._lock:
            self._init_state()

    def entities(self) -> list[dict[str, Any]]:
        """Stored entities as posted (no ``$audit``), sorted by ``_id``, metadata included."""
        with self._lock:
            stored = [*self._entities.values(), self._metadata]
            return [copy.deepcopy(s.entity) for s in sorted(stored, key=lambda s: s.entity_id)]

    def audit(self, entity_id: str) -> dict[str, Any] | None:
        """The ``$audit`` block of one stored entity (metadata included)."""
        with self._lock:
            stored = self._lookup(entity_id)
            return copy.deepcopy(stored.audit) if stored else None

    def load(self, entities: list[dict[str, Any]], group: str = DEFAULT_GROUP) -> None:
        """Seed a config group directly, recording ``$audit`` as an upload would.

        Replaces the group's pipes and systems; metadata is replaced only when one is given.
        Raises ``ValueError`` on any validation error; unknown ``$ENV`` names are tolerated, so
        seeding may come before the variables.
        """
        with self._lock:
            ctx = self._context(force=True, group=group)
            plan = make_plan([Posted(e) for e in entities], ctx)
            if plan.has_errors:
                raise ValueError(f"invalid seed: {json.dumps(plan.report)}")
            self._replace_group(group, plan, Actor(user_id="seed"), keep_metadata=True)

    @property
    def put_count(self) -> int:
        """Config writes received, any outcome (not reset by reset_log): each ``PUT /api/config[/{group}]``
        and each per-entity write (``POST /api/pipes``, ``PUT /api/pipes/{id}/config``, ``DELETE
        /api/pipes/{id}``, systems likewise), so a one-pipe apply counts 1 whichever way it is written."""
        with self._lock:
            return self._put_count

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request since the last ``reset_log()``, oldest first."""
        with self._lock:
            return list(self._requests)

    def reset_log(self) -> None:
        with self._lock:
            self._requests.clear()

    def count(self, method: str, path: str) -> int:
        """Requests seen with this method and exact path (no query string)."""
        with self._lock:
            return sum(1 for r in self._requests if r.method == method.upper() and r.path == path)

    def fail_next(self, status: int = 503, times: int = 1, path_prefix: str | None = None) -> None:
        """Answer the next ``times`` requests under ``path_prefix`` with ``status``."""
        with self._lock:
            self._failures.append(_Failure(status, times, path_prefix))

    def set_delay(self, seconds: float, path_prefix: str | None = None) -> None:
        """Delay responses under ``path_prefix`` (0 removes the delay for that prefix)."""
        with self._lock:
            if seconds > 0:
                self._delays[path_prefix] = seconds
            else:
                self._delays.pop(path_prefix, None)

    def expire_token(self) -> None:
        """From now on the configured token is refused with 403."""
        with self._lock:
            self._token_expired = True

    def set_token(self, jwt: str | None) -> None:
        """Rotate the accepted token (clears an ``expire_token()``)."""
        with self._lock:
            self._jwt = jwt
            self._token_expired = False

    def keep_deploying(self, seconds: float) -> None:
        """Pipes report ``runtime.state == "Deploying"`` for ``seconds`` after each upload."""
        with self._lock:
            self._deploy_hold = max(0.0, seconds)

    def env_values(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._env)

    def secret_values(self) -> dict[str, str]:
        """Global secret values (never exposed over HTTP)."""
        with self._lock:
            return dict(self._secrets)

    def system_secret_values(self, system_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self._system_secrets.get(system_id, {}))

    def add_unknown_file(self, path: str, content: bytes) -> None:
        """Make the zip export carry ``unknown/<path>`` from now on, whatever is uploaded later.

        This models node-side content the deployer cannot remove, so tests can check that it is
        reported rather than redeployed forever.
        """
        with self._lock:
            self._pinned_unknown[f"unknown/{path}"] = content

    def set_env_values(self, values: Mapping[str, Any]) -> None:
        """Seed the environment variables in-process (same as ``PUT /api/env``)."""
        with self._lock:
            self._env = copy.deepcopy(dict(values))

    def set_secret_values(self, values: Mapping[str, str]) -> None:
        """Seed the global secrets in-process (same as ``PUT /api/secrets``)."""
        with self._lock:
            self._secrets = dict(values)

    def pump_operations(self) -> list[tuple[str, str]]:
        """``(pipe_id, operation)`` for every pump request accepted, oldest first."""
        with self._lock:
            return list(self._pump_log)

    def fail_runs(self, pipe_id: str, message: str | None = "emulated failure") -> None:
        """Make every later run of ``pipe_id`` fail with ``message`` (``None`` heals it).

        The pipe's current runtime changes at once (a failed run is recorded now), as if the
        node had just run it; the pipe may be deployed later, the switch waits for it.
        """
        with self._lock:
            if message is None:
                self._failing_runs.pop(pipe_id, None)
            else:
                self._failing_runs[pipe_id] = message
            stored = self._find("pipe", pipe_id)
            if stored is not None:
                self._run_pump(stored)

    def run_pipe(self, pipe_id: str) -> dict[str, Any]:
        """Run a pipe's pump once now, as the scheduler would; returns the pump's runtime."""
        with self._lock:
            stored = self._find("pipe", pipe_id)
            if stored is None:
                raise KeyError(f"no pipe {pipe_id!r}")
            self._run_pump(stored)
            return self._pump_runtime(stored)

    # ---- internal state operations (call with the lock held) ---------------------------------

    def _tick(self) -> datetime:
        """A strictly increasing clock, so two quick changes never share a timestamp."""
        now = self._clock()
        if now <= self._last_tick:
            now = self._last_tick + timedelta(microseconds=1)
        self._last_tick = now
        return now

    def _lookup(self, entity_id: str) -> Stored | None:
        if entity_id == self._metadata.entity_id and entity_id not in self._entities:
            return self._metadata
        return self._entities.get(entity_id)

    def _new_stored(self, entity: dict[str, Any], kind: Kind, group: str,
                    errors: list[ConfigError], previous: Stored | None, actor: Actor) -> Stored:
        """Build a stored entity, keeping ``created`` and bumping ``last_modified`` on change."""
        if previous is not None and previous.entity == entity:
            audit, ts = previous.audit, previous.ts
        else:
            moment = self._tick()
            ts = int(moment.timestamp() * 1_000_000)
            stamp, who = transit_ts(moment), actor.to_json()
            audit = {"last_modified_ts": stamp, "last_modified_by": who}
            if previous is None:
                audit = {"created_ts": stamp, "created_by": who, **audit}
            else:
                created = {k: previous.audit[k] for k in ("created_ts", "created_by")}
                audit = {**created, **audit}
        disabled = previous.disabled if previous is not None else False
        pump = None
        if kind == "pipe":
            pump = previous.pump if previous is not None and previous.pump else PumpState()
        return Stored(entity, kind, group, list(errors), audit, ts, disabled, pump)

    def _store(self, item: Checked, group: str, actor: Actor) -> Stored:
        assert item.entity is not None and item.kind is not None
        if item.kind == "metadata":
            self._set_metadata(item.entity, item.errors, actor)
            return self._metadata
        previous = self._entities.get(item.entity_id)
        if previous is not None and previous.entity.get("type") != item.entity.get("type"):
            # Emulator choice (the reference leaves it open): a new type is a new entity, created afresh,
            # and a system's own secrets are deleted with the old one, as on DELETE.
            self._remove(item.entity_id)
            previous = None
        stored = self._new_stored(item.entity, item.kind, group, item.errors, previous, actor)
        self._entities[item.entity_id] = stored
        if previous is None or previous.audit is not stored.audit:
            self._record_history(stored)
            if stored.kind == "pipe" and self.run_on_deploy and not stored.disabled:
                self._run_pump(stored)
        return stored

    def _set_metadata(self, entity: dict[str, Any], errors: list[ConfigError],
                      actor: Actor) -> None:
        previous = self._metadata if self._metadata.entity_id == entity["_id"] else None
        self._metadata = self._new_stored(entity, "metadata", DEFAULT_GROUP, errors, previous,
                                          actor)
        if previous is None or previous.audit is not self._metadata.audit:
            self._record_history(self._metadata)

    def _remove(self, entity_id: str) -> Stored | None:
        """Delete a pipe or system; a system's scoped secrets go with it."""
        self._system_secrets.pop(entity_id, None)
        removed = self._entities.pop(entity_id, None)
        if removed is not None:
            self._record_history(removed, deleted=True)
        return removed

    def _record_history(self, stored: Stored, deleted: bool = False) -> None:
        """Keep every version (and deletion) for ``/api/config-history/entity``."""
        ts = int(self._tick().timestamp() * 1_000_000) if deleted else stored.ts
        self._history.append(HistoryRecord(len(self._history) + 1, stored.entity_id, ts, deleted,
                                           self._original(stored)))

    def _run_pump(self, stored: Stored) -> None:
        """One run of a pipe's pump, finished at once: it fails when the pipe is switched to fail
        (``fail_runs()`` or the ``emulator-fail-runs`` metadata key) or its config is invalid."""
        pump = stored.pump
        assert pump is not None
        moment = self._tick()
        failure = self._run_failure(stored)
        pump.last_started = pump.last_run = moment
        pump.runs += 1
        pump.success = failure is None
        if failure is None:
            pump.last_message = "Completed"
            pump.last_error = None
            pump.last_seen = str(pump.runs)
        else:
            pump.last_message = f"Failed: {failure}"
            pump.last_error = failure

    def _run_failure(self, stored: Stored) -> str | None:
        if stored.entity_id in self._failing_runs:
            return self._failing_runs[stored.entity_id]
        metadata = stored.entity.get("metadata")
        flag = metadata.get(FAIL_RUNS_KEY) if isinstance(metadata, dict) else None
        if isinstance(flag, str) and flag:
            return flag
        if flag is True:
            return "the pipe failed (emulator-fail-runs)"
        if not stored.is_valid:
            return "the pipe has an invalid config"
        return None

    def _context(self, force: bool, group: str,
                 allowed: frozenset[str] | None = None, check_taken: bool = True) -> CheckContext:
        taken = {i: s.group for i, s in self._entities.items() if s.group != group}
        kinds = allowed or frozenset(
            {"pipe", "system", "metadata"} if group == DEFAULT_GROUP else {"pipe", "system"}
        )
        return CheckContext(
            force=force,
            env_names=frozenset(self._env),
            secret_names=frozenset(self._secrets),
            system_secret_names={k: frozenset(v) for k, v in self._system_secrets.items()},
            taken_ids=taken if check_taken else {},
            allowed_kinds=kinds,
            keep_unknown_files=self.keep_unknown_files,
            refuse_unknown_env=self.refuse_unknown_env,
        )

    def _replace_group(self, group: str, plan: Plan, actor: Actor, keep_metadata: bool) -> None:
        """Replace-all semantics: whatever the upload does not hold is deleted from the group."""
        kept_ids = {item.entity_id for item in plan.accepted if item.kind != "metadata"}
        for entity_id in [i for i, s in self._entities.items() if s.group == group]:
            if entity_id not in kept_ids:
                self._remove(entity_id)
        for item in plan.accepted:
            self._store(item, group, actor)
        if group == DEFAULT_GROUP:
            self._unknown_files = dict(plan.unknown_files)
            has_metadata = any(item.kind == "metadata" for item in plan.accepted)
            if not has_metadata and not keep_metadata:
                self._set_metadata(dict(DEFAULT_METADATA), [], actor)

    def _mark_deploying(self) -> None:
        if self._deploy_hold > 0:
            self._deploying_until = time.monotonic() + self._deploy_hold

    # ---- views ---------------------------------------------------------------------------

    def _original(self, stored: Stored) -> dict[str, Any]:
        """``config.original``: as posted, plus the node's keys as switched on."""
        view = copy.deepcopy(stored.entity)
        if self.audit_in_export:
            view["$audit"] = copy.deepcopy(stored.audit)
        if self.add_ts_and_hash:
            view["_ts"] = stored.ts
            view["_hash"] = content_hash(stored.entity)
        return view

    def _config_view(self, stored: Stored) -> dict[str, Any]:
        original = self._original(stored)
        return {"original": original, "effective": expand_env(original, self._env)}

    def _runtime(self, stored: Stored) -> dict[str, Any]:
        return {
            "is-valid-config": stored.is_valid,
            "config-errors": [error.to_json() for error in stored.errors],
        }

    def _pump_runtime(self, stored: Stored) -> dict[str, Any]:
        """The pump's ``runtime``; the keys are those sesamclient 1.2.6's ``Pump`` reads.

        ``last-run``/``next-run``/``last-started`` are ISO 8601 UTC strings (sesamclient parses them
        with dateutil) or null before the first run; ``success`` is null before it too; ``queues``
        maps ``source``/``dependencies`` to ``{dataset_id: size}`` (``Pump.has_pending_work``).

        What a health check after a deploy relies on (Sesam's API description, sesamclient's ``Pump``):
        a run's ``last-run`` and ``success`` (``false`` when it failed), ``last-message`` and
        ``last-original-error-message`` (the error text), ``is-valid-config`` and ``config-errors``; the
        same keys appear in the pipe's ``runtime``. ``GET /api/health`` answers 503 when the node is
        unhealthy (``healthy = False``).
        """
        pump = stored.pump or PumpState()
        interval = _schedule_interval(stored.entity)
        next_run = None
        if not stored.disabled:
            base = pump.last_run or self._clock()
            next_run = _iso(base + timedelta(seconds=interval))
        return {
            "is-running": pump.running,
            "is-disabled": stored.disabled,
            "is-valid-config": stored.is_valid,
            "config-errors": [error.to_json() for error in stored.errors],
            "last-started": _iso(pump.last_started),
            "last-run": _iso(pump.last_run),
            "next-run": next_run,
            "schedule-interval": interval,
            "success": pump.success,
            "last-message": pump.last_message,
            "last-original-error-message": pump.last_error,
            "last-seen": pump.last_seen,
            "progress": {"processed": pump.processed, "runs": pump.runs},
            "queues": {
                "source": {dataset: 0 for dataset in _source_datasets(stored.entity)},
                "dependencies": {},
                "retries": 0,
            },
            "supported-operations": list(PUMP_OPERATIONS),
        }

    def _pipe_object(self, stored: Stored, fields: set[str] | None = None) -> dict[str, Any]:
        deploying = (time.monotonic() < self._deploying_until
                     or stored.entity_id in STUCK_DEPLOYING)
        metadata = stored.entity.get("metadata")
        runtime = {
            **self._pump_runtime(stored),
            "state": "Deploying" if deploying else "Idle",
            "origin": metadata.get("origin", "user") if isinstance(metadata, dict) else "user",
        }
        full = {
            "_id": stored.entity_id,
            "config": self._config_view(stored),
            "runtime": runtime,
            "storage": self._storage(stored),
            "graph": self._graph(stored),
        }
        return _select_fields(full, fields)

    def _pump_object(self, stored: Stored) -> dict[str, Any]:
        """``GET``/``POST /api/pipes/{id}/pump``: sesamclient names a pump ``pump:<pipe id>``."""
        return {"_id": f"pump:{stored.entity_id}", "type": "pump", "pipe": stored.entity_id,
                "runtime": self._pump_runtime(stored)}

    def _storage(self, stored: Stored) -> dict[str, Any]:
        """Emulator's shape (the reference is silent): the sink dataset and what it holds."""
        pump = stored.pump or PumpState()
        return {"sink-dataset": _sink_dataset(stored.entity),
                "entities": pump.processed, "disk-usage": 0}

    def _graph(self, stored: Stored) -> dict[str, Any]:
        """Emulator's shape: datasets read and written, and the pipes upstream and downstream."""
        sources = _source_datasets(stored.entity)
        sink = _sink_dataset(stored.entity)
        pipes = [s for s in self._entities.values() if s.kind == "pipe"]
        upstream = sorted(p.entity_id for p in pipes if _sink_dataset(p.entity) in sources)
        downstream = sorted(p.entity_id for p in pipes if sink in _source_datasets(p.entity))
        return {"source-datasets": sources, "sink-dataset": sink,
                "upstream-pipes": upstream, "downstream-pipes": downstream}

    def _system_object(self, stored: Stored) -> dict[str, Any]:
        return {
            "_id": stored.entity_id,
            "config": self._config_view(stored),
            "runtime": self._runtime(stored),
        }

    def _metadata_object(self) -> dict[str, Any]:
        stored = self._metadata
        return {
            "_id": stored.entity_id,
            "subjectidentifier": f"http://{stored.entity_id}",
            "config": self._config_view(stored),
            "runtime": self._runtime(stored),
        }

    def _group_export(self, group: str) -> list[Stored]:
        stored = [s for s in self._entities.values() if s.group == group]
        if group == DEFAULT_GROUP:
            stored.append(self._metadata)
        return sorted(stored, key=lambda s: s.entity_id)

    def _zip_export(self, stored: list[Stored], unknown: Mapping[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for item in stored:
                archive.writestr(_export_name(item), dump_json(self._original(item)))
            for name in sorted(unknown):
                archive.writestr(name, unknown[name])
        return buffer.getvalue()

    # ---- request bookkeeping (called by the routes' middleware) ------------------------------

    def _begin(self, method: str, path: str, query: str) -> tuple[RequestRecord, float, int | None]:
        """Record the request and decide on injected delay and failure."""
        with self._lock:
            record = RequestRecord(method, path, query)
            self._requests.append(record)
            whole = method == "PUT" and (path == "/api/config" or path.startswith("/api/config/"))
            if whole or is_entity_write(method, path):
                self._put_count += 1
            delay = max((s for p, s in self._delays.items() if _matches(path, p)), default=0.0)
            status = None
            for failure in self._failures:
                if failure.remaining > 0 and _matches(path, failure.path_prefix):
                    failure.remaining -= 1
                    status = failure.status
                    break
            self._failures = [f for f in self._failures if f.remaining > 0]
            return record, delay, status

    # ---- whole config (call with the lock held) ----------------------------------------------

    def _grouped_original(self, stored: Stored) -> dict[str, Any]:
        view = self._original(stored)
        if stored.group != DEFAULT_GROUP:
            metadata = view.get("metadata")
            view["metadata"] = {**(metadata if isinstance(metadata, dict) else {}),
                                "$config-group": stored.group}
        return view

    def _replace_all(self, plan: Plan, actor: Actor) -> None:
        """Replace every group: each accepted entity goes to its ``$config-group``."""
        kept = {i.entity_id for i in plan.accepted if i.kind != "metadata"}
        for entity_id in [i for i in self._entities if i not in kept]:
            self._remove(entity_id)
        for item in plan.accepted:
            self._store(item, entity_group(item.entity), actor)
        self._unknown_files = dict(plan.unknown_files)
        has_metadata = any(item.kind == "metadata" for item in plan.accepted)
        if not has_metadata and not self.keep_metadata_on_replace:
            self._set_metadata(dict(DEFAULT_METADATA), [], actor)

    # ---- pipes and systems ---------------------------------------------------------------------

    def _object(self, stored: Stored, fields: set[str] | None = None) -> dict[str, Any]:
        if stored.kind == "pipe":
            return self._pipe_object(stored, fields)
        return self._system_object(stored)

    def _find(self, kind: Kind, entity_id: str) -> Stored | None:
        stored = self._entities.get(entity_id)
        if stored is None and kind == "pipe":
            return self._system_pipes.get(entity_id)
        return stored if stored is not None and stored.kind == kind else None

    def _listed(self, kind: Kind, include_internal: bool) -> list[Stored]:
        """User entities plus the node's own pipes; ``system:`` ones only when asked for."""
        found = [s for s in self._entities.values() if s.kind == kind]
        if kind == "pipe":
            found += [s for s in self._system_pipes.values()
                      if include_internal or not s.entity_id.startswith("system:")]
        return sorted(found, key=lambda s: s.entity_id)


def _select_fields(full: dict[str, Any], fields: set[str] | None) -> dict[str, Any]:
    if fields is None:
        return full
    return {key: value for key, value in full.items() if key == "_id" or key in fields}


def entity_group(entity: Mapping[str, Any] | None) -> str:
    """Per-entity writes may name their group in ``metadata["$config-group"]``."""
    metadata = (entity or {}).get("metadata")
    group = metadata.get("$config-group") if isinstance(metadata, dict) else None
    return group if isinstance(group, str) and group else DEFAULT_GROUP


def _export_name(stored: Stored) -> str:
    if stored.kind == "metadata":
        return "node-metadata.conf.json"
    folder = "pipes" if stored.kind == "pipe" else "systems"
    return f"{folder}/{stored.entity_id}.conf.json"


def is_entity_write(method: str, path: str) -> bool:
    """A per-entity config write: POST a collection, PUT an entity's config, DELETE an entity."""
    parts = path.split("/")  # "", "api", "pipes"|"systems", [id], ["config"]
    if len(parts) < 3 or parts[1] != "api" or parts[2] not in ("pipes", "systems"):
        return False
    if method == "POST":
        return len(parts) == 3
    if method == "PUT":
        return len(parts) == 5 and parts[4] == "config"
    return method == "DELETE" and len(parts) == 4

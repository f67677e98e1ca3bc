"""A faithful emulator of the Sesam node HTTP API, served over real HTTP.

Sesam cannot run here, so tests, benchmarks and the demo talk to this emulator instead. It follows
``/work/shared/reference/sesam-api.md``: bearer auth, ``GET``/``PUT /api/config`` in JSON, zip and
multipart form, the validation rules with the 200/400 split, ``$audit`` bookkeeping, metadata, env
variables, secrets (write-only over HTTP), per-entity pipe and system endpoints, health and status.

Beyond the reference it serves what sesamclient 1.2.6 reads: pumps (``GET``/``POST
/api/pipes/{id}/pump``) and pipe runtimes with run results, ``/api/config-all``,
``/api/config-history/entity``, and the node's own pipes; ``docs/emulators.md`` lists the shapes,
the switches and what is not served.

All state lives on a :class:`SesamEmulator` instance and is guarded by one lock, because the server
runs in another thread while the test inspects and steers it in-process (``entities()``,
``fail_next()``, ``set_delay()``, ``expire_token()``, ``keep_deploying()``, ``fail_runs()`` ...).

Run by hand::

    SESAM_EMULATOR_TOKEN=secret python -m autodeployer_emulators.sesam --host 127.0.0.1 --port 9042
"""

from __future__ import annotations

import asyncio
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
from http import HTTPStatus
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autodeployer_emulators._server import (
    LoopbackServer,
    serve_forever,
    standalone_parser,
    token_from_env,
)

__all__ = ["ConfigError", "RequestRecord", "SesamEmulator", "main"]

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


def problem(status: int, detail: str) -> JSONResponse:
    """A small JSON error body for non-validation failures."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status)


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


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class SesamEmulator:
    """In-memory Sesam node with the HTTP API surface the deployer uses.

    ``jwt=None`` disables authentication. Switches are plain attributes (see ``__init__``).
    """

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
        self.app: Starlette = self._build_app()

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

    # ---- public inspection and controls (thread-safe) ----------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> LoopbackServer:
        """Start serving on loopback; usable directly or as a context manager."""
        return LoopbackServer(self.app, host=host, port=port).start()

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
        """``PUT /api/config[/{group}]`` requests received, any outcome (not reset by reset_log)."""
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

    # ---- middleware hooks ------------------------------------------------------------------

    def _begin(self, method: str, path: str, query: str) -> tuple[RequestRecord, float, int | None]:
        """Record the request and decide on injected delay and failure."""
        with self._lock:
            record = RequestRecord(method, path, query)
            self._requests.append(record)
            if method == "PUT" and (path == "/api/config" or path.startswith("/api/config/")):
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

    # ---- app ---------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        entity_routes: list[Route] = []
        collections: tuple[tuple[str, Kind], ...] = (("pipes", "pipe"), ("systems", "system"))
        for collection, kind in collections:
            entity_routes += [
                Route(f"/api/{collection}", self._collection_handler(kind),
                      methods=["GET", "POST"]),
                Route(f"/api/{collection}/{{entity_id}}", self._entity_handler(kind),
                      methods=["GET", "DELETE"]),
                Route(f"/api/{collection}/{{entity_id}}/config", self._entity_config_handler(kind),
                      methods=["GET", "PUT"]),
            ]
        routes = [
            Route("/api", self._root),
            Route("/api/", self._root),
            Route("/api/health", self._health),
            Route("/api/ping", self._ping),
            Route("/api/status", self._status),
            Route("/api/config", self._config, methods=["GET", "PUT"]),
            Route("/api/config/{group}", self._config, methods=["GET", "PUT"]),
            Route("/api/metadata", self._metadata_endpoint, methods=["GET", "PUT", "DELETE"]),
            Route("/api/env", self._env_endpoint, methods=["GET", "PUT", "POST", "PATCH"]),
            Route("/api/env/{name}", self._env_delete, methods=["DELETE"]),
            Route("/api/secrets", self._secrets_endpoint, methods=["GET", "PUT", "POST"]),
            Route("/api/secrets/{key}", self._secrets_delete, methods=["DELETE"]),
            Route("/api/systems/{entity_id}/secrets", self._secrets_endpoint,
                  methods=["GET", "PUT", "POST"]),
            Route("/api/systems/{entity_id}/secrets/{key}", self._secrets_delete,
                  methods=["DELETE"]),
            Route("/api/pipes/{entity_id}/pump", self._pump, methods=["GET", "POST"]),
            Route("/api/config-all", self._config_all, methods=["GET", "PUT"]),
            Route("/api/config-history/entity", self._config_history),
            Route("/api/systems/{entity_id}/status", self._system_status),
            Route("/api/systems/{entity_id}/logs", self._system_logs),
            Route("/api/systems/{entity_id}/reload", self._system_reload, methods=["POST"]),
            *entity_routes,
        ]
        return Starlette(routes=routes, middleware=[Middleware(_ControlMiddleware, emulator=self)])

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
            self._store(item, _entity_group(item.entity), actor)
        self._unknown_files = dict(plan.unknown_files)
        if not any(item.kind == "metadata" for item in plan.accepted):
            if not self.keep_metadata_on_replace:
                self._set_metadata(dict(DEFAULT_METADATA), [], actor)

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
            created = [self._store(item, _entity_group(item.entity), actor)
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


def _select_fields(full: dict[str, Any], fields: set[str] | None) -> dict[str, Any]:
    if fields is None:
        return full
    return {key: value for key, value in full.items() if key == "_id" or key in fields}


def _entity_group(entity: Mapping[str, Any] | None) -> str:
    """Per-entity writes may name their group in ``metadata["$config-group"]``."""
    metadata = (entity or {}).get("metadata")
    group = metadata.get("$config-group") if isinstance(metadata, dict) else None
    return group if isinstance(group, str) and group else DEFAULT_GROUP


def _export_name(stored: Stored) -> str:
    if stored.kind == "metadata":
        return "node-metadata.conf.json"
    folder = "pipes" if stored.kind == "pipe" else "systems"
    return f"{folder}/{stored.entity_id}.conf.json"


def _is_privileged(path: str) -> bool:
    """Env and secrets endpoints, which a real node reserves for group:Admin."""
    return PRIVILEGED_PATH.fullmatch(path) is not None


class _ControlMiddleware:
    """Records every request, then applies injected delays and failures, then auth."""

    def __init__(self, app: ASGIApp, emulator: SesamEmulator) -> None:
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


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the emulator; the token comes from ``SESAM_EMULATOR_TOKEN`` (``SESAM_EMULATOR_JWT``,
    its earlier name, still works), never from argv."""
    parser = standalone_parser("sesam", 9042, "SESAM_EMULATOR_TOKEN")
    parser.add_argument("--accept-unknown-env", action="store_true",
                        help="store uploads naming unknown $ENV variables (warning) instead of "
                             "refusing them with 400")
    parser.add_argument("--no-system-pipes", action="store_true",
                        help="start without the node's own (system, search, replica) pipes")
    args = parser.parse_args(argv)
    jwt = token_from_env("SESAM_EMULATOR_TOKEN", "SESAM_EMULATOR_JWT")
    emulator = SesamEmulator(jwt=jwt, system_pipes=not args.no_system_pipes)
    emulator.refuse_unknown_env = not args.accept_unknown_env
    serve_forever(emulator.app, "Sesam", f"http://{args.host}:{args.port}/api",
                  "SESAM_EMULATOR_TOKEN", jwt is not None, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

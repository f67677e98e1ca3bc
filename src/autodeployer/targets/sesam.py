"""Sesam node target: pipes, systems and node metadata through the whole-config API.

Desired state is ``node-metadata.conf.json`` plus every ``*.conf.json`` below ``pipes/`` and
``systems/`` at SYNC_ROOT. Live state is ``GET /config``. Both are compared entity by entity, keyed by
``_id``, after stripping the keys the node adds; only a non-empty diff is uploaded, with one
``PUT /config`` of the whole desired configuration, then read back and verified.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import NonNegativeInt, SecretStr

from ..config.variables import EnvReader, Frozen, StrictBool, Variable, strip_bearer, validate_model
from ..errors import ConfigError, Refused, TargetError
from ..gcpause import gc_paused
from ..jsondiff import JSONProblem, loads_strict, unified
from ..model import Action, ApplyReport, Change, HealthReport, Plan, Problem, SourceFile, Tree
from ..secret_sources import (
    EnvSecretSource,
    FileSecretSource,
    Fingerprinter,
    SecretSource,
    VaultSecretSource,
    VaultSettings,
)
from .base import HealthRequest, SyncContext, TargetDeps
from .sesam_apply import EACH_MAX, apply_config
from .sesam_entities import LazyEntities, Record, UploadBody, with_kept
from .sesam_health import SesamHealth
from .sesam_live import LiveConfig, LiveScan, entity_digest, read_config, scan_entities
from .sesam_refs import (
    Ref,
    RefError,
    VariablesError,
    VariablesLocation,
    diff_variables,
    find_refs,
    missing_variables,
    parse_variables,
    variables_location,
)
from .sesam_scoped import (
    SCOPED_DIR,
    ScopedFile,
    SystemSecretsPlan,
    loss_warning,
    parse_scoped_files,
    plan_prune,
    plan_system_secrets,
    recreated_systems,
    scoped_refs,
)
from .sesam_self import SelfRule, find_self, orchestrated, self_id_from_path
from .sesam_values import (
    FINGERPRINTS,
    SecretValues,
    ValuesPlan,
    fetch_values,
    read_secrets,
    secret_changes,
    variable_changes,
)
from .sesam_verify import ReadBack
from .transport import error_detail, request

KIND = "sesam"
_T = TypeVar("_T")
DEFAULT_URL = "http://sesam-node:9042/api"
SECRET_KEYS: tuple[str, ...] = ("jwt", "vault_token", "vault_git_token")
SECRET_PREFIX = "SECRET_"
VARIABLES: tuple[Variable, ...] = (
    Variable("SESAM_API_URL", DEFAULT_URL, "Sesam node API base URL."),
    Variable("JWT", None, "JSON Web Token for the Sesam node (required for the sesam target).", True),
    Variable("SESAM_FORCE", "false", "Upload with force=true (apply despite validation errors)."),
    Variable("SELF_ID", None, "_id of the deployer's own system when it is managed in Git on purpose: a config "
             "without it is refused. Unset, the deployer's live system is kept in every upload."),
    Variable("AUTODEPLOYER_PATH", None, "Repository path of the deployer's own system file (upstream G1.x, e.g. "
             "systems/github-autodeployer.conf.json): the live system with that _id is kept in the upload."),
    Variable("SESAM_TIMEOUT", "600", "Seconds one request to the node (read or upload) may take."),
    Variable("ORCHESTRATOR", "false", "Keep a live pipe or system whose metadata.orchestrator.original_configuration "
             "equals its file in Git (the node's orchestrator manages it)."),
    Variable("VARIABLES_FILE_PATH", None, "Repository path of the variables file (a JSON object) deployed with "
             "PUT /api/env; every $ENV(name) must be defined in it."),
    Variable("ENV_VARS_FILENAME", None, "Older form of VARIABLES_FILE_PATH: a file name in env-vars/ under SYNC_ROOT."),
    Variable("WHITELIST_FILE", None, "Path under SYNC_ROOT of a whitelist: one config file path per line; only "
             "listed files deploy (e.g. deployment/whitelist-prod.txt)."),
    Variable("VAULT_URL", None, "HashiCorp Vault (KV v2) holding the values of $SECRET(name)."),
    Variable("VAULT_TOKEN", None, "Vault token.", True),
    Variable("VAULT_GIT_TOKEN", None, "GitHub token exchanged for a Vault token through Vault's GitHub login "
             "(upstream's way).", True),
    Variable("VAULT_MOUNTING_POINT", "secret", "Mount of the KV v2 secrets engine."),
    Variable("VAULT_PATH_PREFIX", None, "Prefix of each secret's path (end it with / for a folder)."),
    Variable("VAULT_TIMEOUT", "10", "Seconds one request to Vault may take; a read gives up after twice this."),
    Variable("SECRETS_FILE", None, "JSON file of secret name to value, read every cycle (instead of Vault)."),
    Variable(SECRET_PREFIX, None, "SECRET_<name>=value: the value of $SECRET(name) (instead of Vault).", True),
    Variable("SECRETS_PRUNE", "false", "Delete a global secret this deployer uploaded before when no config "
             "references it and no secret source holds it any more (never jwt or a secret set by hand)."),
    Variable("SESAM_APPLY_EACH_MAX", "16", "A plan changing at most this many pipes and systems (and not the "
             "metadata) is written entity by entity (POST/PUT/DELETE /api/pipes|systems) instead of one replace-all "
             "PUT /api/config; 0: always replace-all."),
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
    autodeployer_path: str | None = None
    timeout: float = 600.0
    verify_tls: StrictBool = True
    orchestrator: StrictBool = False
    # the variables file: exactly one convention (sesam_refs.variables_location)
    variables_file_path: str | None = None
    env_vars_filename: str | None = None
    profile: str | None = None
    environment: str | None = None
    whitelist_file: str | None = None
    # secret sources, asked in this order: Vault, the file, SECRET_<name>
    vault_url: str | None = None
    vault_token: SecretStr | None = None
    vault_git_token: SecretStr | None = None
    vault_mounting_point: str | None = None
    vault_path_prefix: str = ""
    vault_timeout: float = 10.0
    secrets_file: str | None = None
    env_secrets: tuple[tuple[str, SecretStr], ...] = ()
    secrets_prune: StrictBool = False
    apply_each_max: NonNegativeInt = EACH_MAX  # sesam_apply: small plans are written entity by entity; 0: never

    def vault(self) -> VaultSettings | None:
        """The Vault settings, or None; ValueError naming the variable when incomplete."""
        values = {
            "VAULT_URL": self.vault_url or "",
            "VAULT_TOKEN": self.vault_token.get_secret_value() if self.vault_token else "",
            "VAULT_GIT_TOKEN": self.vault_git_token.get_secret_value() if self.vault_git_token else "",
            "VAULT_MOUNTING_POINT": self.vault_mounting_point or "",
            "VAULT_PATH_PREFIX": self.vault_path_prefix,
        }
        settings = VaultSettings.from_variables(values)
        return dataclasses.replace(settings, timeout=self.vault_timeout) if settings else None

    def variables_location(self, sync_root: str) -> VariablesLocation | None:
        return variables_location(
            sync_root=sync_root,
            variables_file_path=self.variables_file_path,
            env_vars_filename=self.env_vars_filename,
            profile=self.profile,
            environment=self.environment,
        )


def _checked(spec: Spec, where: str) -> Spec:
    """Settings that only make sense together are checked at start, not at the first sync."""
    try:
        spec.vault()
        spec.variables_location("")
    except (ValueError, VariablesError) as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
    if spec.self_id and spec.autodeployer_path:
        raise ConfigError(f"{where + ': ' if where else ''}set SELF_ID or AUTODEPLOYER_PATH, not both")
    return spec


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
    secrets = env.prefixed("SECRET_")
    spec = Spec(
        api_url=normalise_url(env.str("SESAM_API_URL") or DEFAULT_URL),
        jwt=SecretStr(strip_bearer(jwt.get_secret_value())),
        force=env.bool("SESAM_FORCE"),
        self_id=env.str("SELF_ID"),
        autodeployer_path=env.str("AUTODEPLOYER_PATH"),
        timeout=env.number("SESAM_TIMEOUT", minimum=1) or 600.0,
        verify_tls=env.bool("VERIFY_TLS"),
        orchestrator=env.bool("ORCHESTRATOR"),
        variables_file_path=env.str("VARIABLES_FILE_PATH"),
        env_vars_filename=env.str("ENV_VARS_FILENAME"),
        whitelist_file=env.str("WHITELIST_FILE"),
        vault_url=env.str("VAULT_URL"),
        vault_token=env.secret("VAULT_TOKEN"),
        vault_git_token=env.secret("VAULT_GIT_TOKEN"),
        vault_mounting_point=env.str("VAULT_MOUNTING_POINT"),
        vault_path_prefix=env.str("VAULT_PATH_PREFIX") or "",
        vault_timeout=env.number("VAULT_TIMEOUT", minimum=0.1) or 10.0,
        secrets_file=env.str("SECRETS_FILE"),
        env_secrets=tuple((k, SecretStr(v)) for k, v in sorted(secrets.items())),
        secrets_prune=env.bool("SECRETS_PRUNE"),
        apply_each_max=int(env.number("SESAM_APPLY_EACH_MAX", minimum=0) or 0)
        if env.str("SESAM_APPLY_EACH_MAX") else EACH_MAX,
    )
    return _checked(spec, "")


def spec_from_yaml(data: dict[str, Any], where: str, app_name: str | None = None) -> Spec:
    data = dict(data)
    data["api_url"] = normalise_url(str(data.get("api_url", DEFAULT_URL)))
    if data.get("jwt"):
        data["jwt"] = strip_bearer(str(data["jwt"]))
    spec: Spec = validate_model(Spec, data, where)
    return _checked(spec, where)


# --------------------------------------------------------------------------- desired state
@dataclass
class DesiredConfig:
    entities: Mapping[str, dict[str, Any]]  # by _id, metadata included when managed (LazyEntities: on demand)
    files: dict[str, str]  # _id -> file it came from
    metadata_managed: bool
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    refs: list[Ref] = field(default_factory=list)  # every $ENV(...) and $SECRET(...) of the entities
    digests: dict[str, bytes] = field(default_factory=dict)  # _id -> sesam_live.entity_digest (sesam_live.py)


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

    entities: tuple[Record, ...]  # not the dicts: a cached parse holds digests (sesam_entities.py)
    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()
    refs: tuple[Ref, ...] = ()


# path -> (the bytes it was parsed from, SYNC_ROOT, the result): a new commit re-parses only what changed
ParseMemo = dict[str, tuple[bytes, str, ParsedFile]]


def parse_file(path: str, file: SourceFile, shown: str) -> ParsedFile:
    """Read one config file; `shown` is its name in messages (SYNC_ROOT included)."""
    if ".." in path and ".." in path.split("/"):  # the split only when it could be
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
    records: list[Record] = []
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
        records.append(Record(entity["_id"], entity["type"], entity_digest(entity), index))
        stem = path.rsplit("/", 1)[-1].removesuffix(".conf.json")
        if len(items) == 1 and path != METADATA_FILE and stem != entity["_id"]:
            warnings.append(f"{shown}: file name does not match _id {entity['_id']!r}")
    refs: list[Ref] = []
    if b"$ENV(" in file.data or b"$SECRET(" in file.data:  # the walk is only worth it then
        try:
            refs = find_refs(entities, shown)
        except RefError as exc:
            problems.extend(exc.problems)
    return ParsedFile(tuple(records), tuple(problems), tuple(warnings), tuple(refs))


def parse_desired(
    tree: Tree,
    self_id: str | None = None,
    memo: ParseMemo | None = None,
    whitelist: frozenset[str] | None = None,
) -> DesiredConfig:
    """Read and validate the tree; raise Refused listing every problem found.

    With `memo` (filled and pruned here), files whose bytes did not change since the last call are
    not parsed again. With `whitelist` (paths under SYNC_ROOT), only listed config files are read.
    """
    problems: list[Problem] = []
    located: dict[str, tuple[str, int]] = {}  # _id -> (path, index): the entity is read again from there
    data: dict[str, bytes] = {}
    digests: dict[str, bytes] = {}
    kinds: dict[str, str] = {}
    files: dict[str, str] = {}
    warnings: list[str] = []
    ignored: list[str] = []
    refs: list[Ref] = []
    metadata: list[tuple[str, str]] = []  # (_id, file)
    seen: ParseMemo = {}
    with gc_paused():
        for path in sorted(tree.files):
            if not is_config_path(path) or (whitelist is not None and path not in whitelist):
                if not (path.startswith(SCOPED_DIR) and path.endswith(".json")):  # read by sesam_scoped
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
            refs.extend(parsed.refs)
            data[path] = file.data
            for record in parsed.entities:
                _id, shown = record.id, (f"{tree.sync_root}/{path}" if tree.sync_root else path)
                if _id in files:
                    problems.append(Problem(f"_id defined twice: in {files[_id]} and in {shown}", entity=_id))
                    continue
                if record.kind == "metadata":
                    metadata.append((_id, shown))
                located[_id] = (path, record.position)
                digests[_id] = record.digest
                kinds[_id] = record.kind
                files[_id] = shown
    if memo is not None:
        memo.clear()
        memo.update(seen)
    if len(metadata) > 1:
        where = "; ".join(f"{_id} in {file}" for _id, file in metadata)
        problems.append(Problem(f"more than one metadata entity: {where}", file=metadata[1][1]))
    if self_id and not problems and not kinds.get(self_id, "").startswith("system:"):
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
        entities=LazyEntities(located, data, _load_items, strip_node_keys),
        files=files,
        metadata_managed=bool(metadata),
        warnings=warnings,
        notices=notices,
        refs=refs,
        digests=digests,
    )


def _load_items(path: str, data: bytes) -> list[Any]:
    """A config file's items, parsed again (it passed parse_file's checks when it was read)."""
    doc = loads_strict(data)
    return [doc] if isinstance(doc, dict) else list(doc)


def parse_whitelist(data: bytes, file: str) -> frozenset[str]:
    """One config path per line, relative to SYNC_ROOT; blank lines and ``#`` comments are skipped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Refused(f"{file}: the whitelist is not UTF-8 text") from None
    paths = set()
    for line in text.splitlines():
        entry = line.strip().removeprefix("./")
        if entry and not entry.startswith("#"):
            paths.add(entry.replace("\\", "/"))
    return frozenset(paths)


# --------------------------------------------------------------------------- diff
def _kind(entity: dict[str, Any]) -> str:
    return str(entity.get("type", "?"))


LiveEntities = list[dict[str, Any]] | LiveConfig | LiveScan


def diff(desired: DesiredConfig, live: LiveEntities, stripped: bool = False) -> Plan:
    """Semantic diff keyed by _id. Unmanaged metadata is carried over untouched. `stripped`: the live
    entities are without node keys already (see strip_live), so they are not copied a second time.
    `live` may be the node's answer read lazily (LiveConfig) or its scan already made (LiveScan)."""
    with gc_paused():
        return _diff(desired, scan_live(desired, live, stripped))


def scan_live(desired: DesiredConfig, live: LiveEntities, stripped: bool = False) -> LiveScan:
    """The live entities compared one by one with the desired digests (sesam_live.py): only those that may
    differ are kept whole."""
    if isinstance(live, LiveScan):
        return live
    with gc_paused():
        if isinstance(live, LiveConfig):
            return live.scan(desired.digests)
        return scan_entities(live, desired.digests, _same if stripped else strip_node_keys)


def _same(entity: dict[str, Any]) -> dict[str, Any]:
    return entity


def strip_live(live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The live entities without node keys, once per plan: at 50,000 entities each copy costs ~100 ms.
    Not with the collector paused: httpx holds the node's answer in a reference cycle, and a pause here kept
    that body alive through the diff (10,000 entities: 214 MB peak RSS instead of 190 MB, issue 18)."""
    return [strip_node_keys(e) for e in live]


def _upload_body(entities: Mapping[str, dict[str, Any]], metadata: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every desired entity, by _id, after the live metadata we do not manage (the apply path may use more
    memory than a no-change cycle: every entity is read again from its file)."""
    body = [entities[_id] for _id in sorted(entities)]
    return [metadata, *body] if metadata is not None else body


def _diff(desired: DesiredConfig, scan: LiveScan) -> Plan:
    """Exact comparison (dict equality: key order aside, 1 == 1.0) of the candidates the scan kept; every
    other live entity had the digest of its desired entity, so it is equal."""
    live_by_id: dict[str, dict[str, Any]] = dict(scan.candidates)
    live_metadata: dict[str, Any] | None = None
    for entity in scan.metadata:
        live_metadata = entity
        if desired.metadata_managed:
            live_by_id[str(entity.get("_id"))] = entity
    entities = desired.entities
    check = sorted({*(i for i in live_by_id if i in entities), *(i for i in entities if i not in scan.ids)})
    changes: list[Change] = []
    for _id in check:
        want = entities[_id]
        have = live_by_id.get(_id)
        if have is None:
            changes.append(Change(Action.ADD, _id, _kind(want), unified(None, want, _id)))
        elif have != want:
            changes.append(Change(Action.CHANGE, _id, _kind(want), unified(have, want, _id)))
    for _id in sorted(i for i in live_by_id if i not in entities):
        have = live_by_id[_id]
        changes.append(Change(Action.REMOVE, _id, _kind(have), unified(have, None, _id)))
    carried = live_metadata if not desired.metadata_managed else None  # replace-all must not reset it
    payload = UploadBody(lambda: _upload_body(entities, carried), entities)  # built when read: apply or tests
    managed_desired = len(entities) > (1 if desired.metadata_managed else 0)
    return Plan(
        changes=changes,
        warnings=list(desired.warnings),
        notices=list(desired.notices),
        payload=payload,
        desired_count=len(entities),
        live_count=scan.managed + (len(scan.metadata) if desired.metadata_managed else 0),
        empties_target=scan.managed > 0 and not managed_desired,
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


@dataclass
class SesamPayload:
    """What one apply writes, each part only when it differs: the values travel outside the Plan's
    changes, which are shown and recorded."""

    config: Sequence[dict[str, Any]] | None  # the PUT /config body (UploadBody: built when read); None: in sync
    values: ValuesPlan
    extra: SecretsExtra = field(default_factory=lambda: SecretsExtra())


@dataclass
class SecretsExtra:
    """System-scoped secrets, pruned secrets and re-created systems of one sync (sesam_scoped)."""

    scoped: SystemSecretsPlan = field(default_factory=SystemSecretsPlan)
    files: dict[str, ScopedFile] = field(default_factory=dict)
    fresh: frozenset[str] = frozenset()  # systems whose scoped secrets can only go after the config upload
    prune: tuple[str, ...] = ()
    memory: dict[str, str] | None = None  # the fingerprints to keep, when they differ from the last ones
    recreated: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


class SesamTarget:
    kind = KIND

    def __init__(self, spec: Spec, deps: TargetDeps) -> None:
        self.spec = spec
        self._http = deps.http
        self._redactor = deps.redactor
        self._state_dir = deps.state_dir
        self._source = deps.source
        self._headers = {
            "Authorization": f"Bearer {spec.jwt.get_secret_value()}",
            "Accept": "application/json",
        }
        self._cache: tuple[str, str | None, DesiredConfig] | None = None
        self._memo: ParseMemo = {}
        self._sources = self._secret_sources(spec)
        self._fingerprinter: Fingerprinter | None = None
        self._variables_memo: tuple[bytes, dict[str, Any]] | None = None

    @staticmethod
    def _secret_sources(spec: Spec) -> list[SecretSource]:
        sources: list[SecretSource] = []
        vault = spec.vault()
        if vault is not None:
            sources.append(VaultSecretSource(vault))
        if spec.secrets_file:
            sources.append(FileSecretSource(spec.secrets_file))
        if spec.env_secrets:
            sources.append(EnvSecretSource({k: v.get_secret_value() for k, v in spec.env_secrets}))
        return sources

    # ------------------------------------------------------------------ desired state
    def drop_cache(self) -> None:
        """Forget every parsed file, as a restarted process has (benchmarks time a first parse with it)."""
        self._cache = None
        self._memo.clear()

    def desired(self, tree: Tree, whitelist: frozenset[str] | None = None) -> DesiredConfig:
        """Parsed desired state, cached per tree (drift checks) and per file (a new commit parses what changed)."""
        key = (tree.tree_id, self.spec.self_id)
        if self._cache and self._cache[:2] == key and tree.tree_id:
            return self._cache[2]
        desired = parse_desired(tree, self.spec.self_id, self._memo, whitelist)
        self._cache = (key[0], key[1], desired)
        return desired

    async def _repo_file(self, tree: Tree, path: str) -> bytes | None:
        """A repository file: from the tree when under SYNC_ROOT, else from the mirror."""
        root = tree.sync_root.strip("/")
        relative = path if not root else (path[len(root) + 1:] if path.startswith(root + "/") else None)
        if relative is not None:
            file = tree.files.get(relative)
            return None if file is None or file.is_symlink else file.data
        if self._source is None:
            return None
        return await self._source.read_path(tree.revision, path)

    async def _whitelist(self, tree: Tree) -> frozenset[str] | None:
        if not self.spec.whitelist_file:
            return None
        file = self.spec.whitelist_file.strip("/")
        data = tree.files.get(file)
        if data is None:
            raise Refused(f"{file} (WHITELIST_FILE): no such file under SYNC_ROOT at {tree.revision[:12]}")
        return parse_whitelist(data.data, file)

    async def _variables(self, tree: Tree) -> tuple[dict[str, Any], str] | None:
        """The variables file and its name in messages, or None when no convention is set."""
        try:
            location = self.spec.variables_location(tree.sync_root)
        except VariablesError as exc:
            raise Refused(str(exc)) from None
        if location is None:
            return None
        shown = f"{location.path} ({location.setting})"
        data = await self._repo_file(tree, location.path)
        if data is None:
            raise Refused(f"{shown}: no such file in the repository at {tree.revision[:12]}")
        if self._variables_memo is not None and self._variables_memo[0] == data:
            return dict(self._variables_memo[1]), location.path
        try:
            variables: dict[str, Any] = dict(parse_variables(data, location.path))
        except VariablesError as exc:
            raise Refused(f"the variables file is not deployable: {exc}") from None
        self._variables_memo = (data, variables)
        return dict(variables), location.path

    # ------------------------------------------------------------------ live state
    def prefetch(self) -> asyncio.Task[LiveConfig]:
        """The live configuration does not depend on Git: read it while Git is fetched and parsed."""
        return asyncio.get_running_loop().create_task(self.live())

    async def _get_json(self, path: str) -> Any:
        url = f"{self.spec.api_url}{path}"
        # Reads are quick on a healthy node: never wait longer than a minute, however long uploads may take.
        response = await request(self._http, "GET", url, headers=self._headers, timeout=min(60.0, self.spec.timeout))
        self._check_auth(response, "GET", url)
        if response.status_code != 200:
            raise TargetError(f"GET {url}: {response.status_code} {error_detail(response)}")
        try:
            with gc_paused():
                return response.json()
        except ValueError:
            raise TargetError(f"GET {url}: the node answered with something that is not JSON") from None

    async def live(self) -> LiveConfig:
        """The node's whole configuration, decoded entity by entity as it streams in and held compact
        (sesam_live.py); `list(live)` gives the entities without node keys."""
        url = f"{self.spec.api_url}/config"
        return await read_config(self._http, url, self._headers, min(60.0, self.spec.timeout), self._check_auth,
                                 strip_node_keys)

    async def _read_entity(self, collection: str, entity_id: str) -> dict[str, Any] | None:
        """One entity's config as stored (``GET /{pipes|systems}/<id>/config``); None when the node has none."""
        url = f"{self.spec.api_url}/{collection}/{quote(entity_id, safe='')}/config"
        response = await request(self._http, "GET", url, headers=self._headers, timeout=min(60.0, self.spec.timeout))
        self._check_auth(response, "GET", url)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise TargetError(f"GET {url}: {response.status_code} {error_detail(response)}")
        try:
            body = response.json()
        except ValueError:
            raise TargetError(f"GET {url}: the node answered with something that is not JSON") from None
        if not isinstance(body, dict):
            raise TargetError(f"GET {url}: expected a JSON object (the entity's config)")
        return body

    async def live_env(self) -> dict[str, Any]:
        body = await self._get_json("/env")
        if not isinstance(body, dict):
            raise TargetError(f"GET {self.spec.api_url}/env: expected a JSON object of variables")
        return body

    async def live_secret_names(self, system_id: str | None = None) -> list[str]:
        path = "/secrets" if system_id is None else f"/systems/{quote(system_id, safe='')}/secrets"
        body = await self._get_json(path)
        if not isinstance(body, list):
            raise TargetError(f"GET {self.spec.api_url}{path}: expected a JSON list of secret names")
        return [n for n in body if isinstance(n, str)]

    # ------------------------------------------------------------------ plan
    def _self_rule(self, ctx: SyncContext) -> SelfRule:
        path_id = self_id_from_path(self.spec.autodeployer_path) if self.spec.autodeployer_path else None
        return SelfRule(self_id=path_id, api_url=self.spec.api_url, repo_url=ctx.app.source.url,
                        repo_full_name=ctx.app.source.repo_full_name)

    def _keep_live(self, desired: DesiredConfig, live: LiveScan, ctx: SyncContext) -> DesiredConfig:
        """The deployer's own live system and orchestrator-managed entities, kept as they are live. Only the
        scan's candidates can matter: a live entity equal to its file needs no keeping."""
        if self.spec.self_id and not self.spec.orchestrator:
            return desired  # nothing to keep: the own system is managed in Git, no orchestrator
        live_by_id = live.candidates
        kept: dict[str, dict[str, Any]] = {}
        notices: list[str] = []
        if not self.spec.self_id:  # SELF_ID: the own system is managed in Git on purpose
            problems = []
            for own in find_self(live_by_id, self._self_rule(ctx), normalise_url):
                have, want = live_by_id[own], desired.entities.get(own)
                if want is None:
                    kept[own] = have
                    notices.append(f"kept the deployer's own system {own!r} from the node (it is not in Git)")
                elif want != have:
                    problems.append(Problem(
                        "would change the deployer's own system; it is kept as it is live. To manage it in Git on "
                        f"purpose, set SELF_ID={own} (then a commit without its file is refused)",
                        desired.files.get(own), own))
            if problems:
                raise Refused("the commit changes the deployer's own system", problems)
        if self.spec.orchestrator:
            managed = []
            for _id, current in live_by_id.items():
                want = desired.entities.get(_id)
                if want is not None and current != want and orchestrated(current, want, NODE_KEYS):
                    kept[_id] = current
                    managed.append(_id)
            if managed:
                notices.append(f"kept {len(managed)} entities managed by the node's orchestrator: "
                               + ", ".join(sorted(managed)[:5]) + (" ..." if len(managed) > 5 else ""))
        if not kept:
            return desired
        files = {**desired.files, **{k: desired.files.get(k, "(live)") for k in kept}}
        return dataclasses.replace(desired, entities=with_kept(desired.entities, kept), files=files,
                                   notices=desired.notices + notices)

    def _config_plan(self, desired: DesiredConfig, live: LiveEntities, ctx: SyncContext) -> Plan:
        scan = scan_live(desired, live)  # one pass over the node's answer, for both
        return diff(self._keep_live(desired, scan, ctx), scan)

    async def _values(self, ctx: SyncContext, refs: list[Ref]) -> tuple[ValuesPlan, list[str]]:
        """Variables and secrets: checked against what will be live after the sync, before any write."""
        variables = await self._variables(ctx.tree)
        needs_env = variables is not None or any(r.kind == "env" for r in refs)
        secret_refs = [r for r in refs if r.kind == "secret"]
        # The node's two reads and the secret source's are independent round trips: they overlap.
        fetched = asyncio.ensure_future(fetch_values(self._sources, sorted({r.name for r in secret_refs})))
        try:
            live_env, global_names = await asyncio.gather(
                self.live_env() if needs_env else _constant({}),
                self.live_secret_names() if secret_refs else _constant([]))
        except BaseException:
            fetched.cancel()
            raise
        names, where = (variables[0], f"the variables file {variables[1]}") if variables is not None else (
            live_env, "the node (GET /api/env; no variables file is configured)")
        missing = missing_variables(refs, names)
        if missing:
            fetched.cancel()
            raise Refused(f"$ENV references name variables that {where} does not define", missing)
        plan = ValuesPlan(live_variables=live_env)
        if variables is not None:
            plan.variables = variables[0]
            plan.variables_diff = diff_variables(variables[0], live_env)
        if not secret_refs:
            fetched.cancel()
            return plan, []
        scoped: dict[str, list[str]] = {}
        for ref in secret_refs:
            if ref.name not in global_names and ref.entity not in scoped:
                scoped[ref.entity] = await self._system_secret_names(ref.entity)
        if self._sources and self._fingerprinter is None:
            self._fingerprinter = Fingerprinter.from_state_dir(self._state_dir)
        last_sent = ctx.memory.get(FINGERPRINTS)
        values, secrets_diff, fingerprints, warnings = await read_secrets(
            refs, self._sources, global_names, scoped, self._fingerprinter,
            last_sent if isinstance(last_sent, dict) else {}, fetched)
        self._redactor.add(*(values.body(values.names()).values()))
        plan.secrets, plan.secrets_diff, plan.fingerprints = values, secrets_diff, fingerprints
        return plan, warnings

    async def _system_secret_names(self, system_id: str) -> list[str]:
        try:
            return await self.live_secret_names(system_id)
        except TargetError as exc:
            if " 404 " in str(exc):  # the system is not on the node yet: it has no secrets of its own
                return []
            raise

    async def plan(self, ctx: SyncContext) -> Plan:
        whitelist = await self._whitelist(ctx.tree)
        desired = self.desired(ctx.tree, whitelist)
        live = scan_live(desired, await ctx.prefetched if ctx.prefetched is not None else await self.live())
        config = self._config_plan(desired, live, ctx)
        scoped = parse_scoped_files(ctx.tree, desired.entities, whitelist is not None)
        values, warnings = await self._values(ctx, scoped_refs(desired.refs, scoped)[1])
        extra = await self._extra(ctx, desired, live, config, scoped, values)
        changes = (variable_changes(values.variables_diff) + secret_changes(values.secrets_diff) + extra.changes
                   + config.changes)
        return dataclasses.replace(
            config, changes=changes, warnings=config.warnings + warnings + extra.warnings,
            payload=SesamPayload(config.payload if config.changes else None, values, extra))

    async def _extra(self, ctx: SyncContext, desired: DesiredConfig, live: LiveScan, config: Plan,
                     scoped: dict[str, ScopedFile], values: ValuesPlan) -> SecretsExtra:
        """System-scoped secrets, pruning and re-created systems (sesam_scoped); requests only when used."""
        remembered = ctx.memory.get(FINGERPRINTS)
        last_sent: dict[str, str] = dict(remembered) if isinstance(remembered, dict) else {}
        extra = SecretsExtra(files=scoped, recreated=recreated_systems(desired.entities, live.candidate_entities()))
        for _id, why in extra.recreated.items():
            extra.warnings.append(loss_warning(_id, why, await self._system_secret_names(_id)))
        for change in config.changes:
            if change.action is Action.REMOVE and change.kind.startswith("system:"):
                names = await self._system_secret_names(change.id)
                if names:
                    extra.warnings.append(f"system {change.id} is removed: its own secrets ({', '.join(names)}) "
                                          "are deleted with it")
        if self._sources and self._fingerprinter is None and (scoped or self.spec.secrets_prune):
            self._fingerprinter = Fingerprinter.from_state_dir(self._state_dir)
        live_ids = live.ids
        extra.fresh = frozenset(i for i in scoped if i not in live_ids or i in extra.recreated)
        extra.scoped = await plan_system_secrets(scoped, self._sources, self._fingerprinter, last_sent,
                                                 self._system_secret_names, extra.fresh)
        self._redactor.add(*extra.scoped.secret_values())
        extra.changes = list(extra.scoped.changes)
        if self.spec.secrets_prune and self._sources:
            wanted = {r.name for r in desired.refs if r.kind == "secret"}
            prune, warnings = await plan_prune(last_sent, wanted, await self.live_secret_names(), self._sources)
            extra.prune, extra.warnings = tuple(prune), extra.warnings + warnings
            extra.changes += [Change(Action.REMOVE, n, "secret", f"{n}: removed (SECRETS_PRUNE: uploaded by this "
                                     "deployer, no secret source holds it any more)") for n in prune]
        memory = {**last_sent, **values.fingerprints, **extra.scoped.fingerprints}
        for name in extra.prune:
            memory.pop(name, None)
        extra.memory = memory if memory != last_sent else None
        return extra

    # ------------------------------------------------------------------ apply
    async def _put_env(self, body: dict[str, Any]) -> None:
        url = f"{self.spec.api_url}/env"
        response = await request(self._http, "PUT", url, json=body, headers=self._headers, timeout=self.spec.timeout)
        self._check_auth(response, "PUT", url)
        if response.status_code != 200:
            raise TargetError(f"PUT {url}: {response.status_code} {error_detail(response)}")

    async def _post_secrets(self, values: SecretValues, names: tuple[str, ...], path: str = "/secrets") -> None:
        url = f"{self.spec.api_url}{path}"
        response = await request(self._http, "POST", url, json=values.body(names), headers=self._headers,
                                 timeout=self.spec.timeout)
        self._check_auth(response, "POST", url)
        if response.status_code != 200:
            # The node's answer may quote the body; only the status is safe to show.
            raise TargetError(f"POST {url}: {response.status_code} (secrets {', '.join(names)} not deployed)")

    async def apply(self, plan: Plan, ctx: SyncContext) -> ApplyReport:
        """Variables a new config needs, then secrets, then the config, then the variables no config uses
        any more: the node never holds config that names a variable or secret it does not have."""
        payload: SesamPayload = plan.payload
        values = payload.values
        if values.first_env is not None:
            await self._put_env(values.first_env)
        if values.secrets_diff.to_send:
            await self._post_secrets(values.secrets, values.secrets_diff.to_send)
        extra = payload.extra
        await self._post_system_secrets(extra, before_config=True)
        report = ApplyReport()
        if payload.config is not None:
            report = await apply_config(plan, payload.config, extra.recreated, self._send, self._put_config,
                                          self.spec.apply_each_max)
        await self._post_system_secrets(extra, before_config=False)
        if values.final_env is not None:
            await self._put_env(values.final_env)
        for name in extra.prune:
            await self._delete_secret(name)
        if extra.memory is not None:
            report.memory = {**ctx.memory, FINGERPRINTS: extra.memory}
        if extra.recreated:
            report.details["recreated_systems"] = dict(extra.recreated)
        if extra.prune:
            report.details["pruned_secrets"] = list(extra.prune)
        return report

    async def _post_system_secrets(self, extra: SecretsExtra, before_config: bool) -> None:
        """A system on the node gets its secrets before the config naming them; a new or re-created one after."""
        for system_id, names in sorted(extra.scoped.to_send.items()):
            if (system_id in extra.fresh) == before_config:
                continue
            path = f"/systems/{quote(system_id, safe='')}/secrets"
            await self._post_secrets(extra.scoped.values[system_id], names, path)

    async def _delete_secret(self, name: str) -> None:
        url = f"{self.spec.api_url}/secrets/{quote(name, safe='')}"
        response = await request(self._http, "DELETE", url, headers=self._headers, timeout=self.spec.timeout)
        self._check_auth(response, "DELETE", url)
        if response.status_code not in (200, 404):  # 404: gone already, which is what was asked
            raise TargetError(f"DELETE {url}: {response.status_code} {error_detail(response)}")

    async def _send(self, method: str, path: str, body: Any) -> Any:
        """One per-entity write of sesam_apply (``path`` under the API URL, ids already quoted)."""
        force = "true" if self.spec.force else "false"
        url = f"{self.spec.api_url}{path}" + (f"?force={force}" if method != "DELETE" else "")
        response = await request(self._http, method, url, json=body, headers=self._headers,
                                 timeout=self.spec.timeout)
        self._check_auth(response, method, url)
        return response

    async def _put_config(self, config: list[dict[str, Any]]) -> ApplyReport:
        force = "true" if self.spec.force else "false"
        url = f"{self.spec.api_url}/config?force={force}"
        response = await request(
            self._http, "PUT", url, json=config, headers=self._headers, timeout=self.spec.timeout
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
        report = ApplyReport(warnings=[f"the node warned: {w}" for w in warnings])
        if errors:
            report.warnings += [f"applied with error: {e}" for e in errors]
        report.details["validation_items"] = len(errors) + len(warnings)
        return report

    async def verify(self, plan: Plan, ctx: SyncContext) -> Plan:
        """Read back the config, the variables and the secret names.

        Only what the apply changed is read back (sesam_verify.py): each changed pipe or system on its
        own, a removed one confirmed gone; many changes, or the metadata, take the one whole read."""
        payload: SesamPayload = plan.payload
        values = payload.values
        targeted = ReadBack.of(plan, payload.config)
        if targeted is not None:
            config = dataclasses.replace(plan, changes=await targeted.run(self._read_entity, strip_node_keys))
        else:
            config = self._config_plan(self.desired(ctx.tree), await self.live(), ctx)
        changes = list(config.changes)
        if values.variables is not None:
            changes = variable_changes(diff_variables(values.variables, await self.live_env())) + changes
        if values.secrets:
            listed = set(await self.live_secret_names())
            changes += [Change(Action.ADD, n, "secret", f"{n}: not listed by the node")
                        for n in values.secrets.names() if n not in listed]
        changes += await self._verify_extra(payload.extra)
        return dataclasses.replace(config, changes=changes)

    async def _verify_extra(self, extra: SecretsExtra) -> list[Change]:
        """Scoped secrets listed by their systems; pruned secrets no longer listed."""
        changes = []
        for system_id, file in sorted(extra.files.items()):
            listed = set(await self._system_secret_names(system_id))
            changes += [Change(Action.ADD, f"{system_id}/{n}", "system secret", f"{n}: not listed by the node")
                        for n in sorted(file.names) if n not in listed]
        if extra.prune:
            listed = set(await self.live_secret_names())
            changes += [Change(Action.REMOVE, n, "secret", f"{n}: still listed by the node")
                        for n in extra.prune if n in listed]
        return changes

    def _check_auth(self, response: Any, method: str, url: str) -> None:
        if response.status_code in (401, 403):
            raise TargetError(
                f"{method} {url.split('?')[0]}: authentication failed ({response.status_code}); check JWT"
            )

    # ------------------------------------------------------------------ health (targets.base.HealthCheck)
    def watches_health(self) -> bool:
        return True

    async def health(self, request: HealthRequest) -> HealthReport:
        """The changed pipes' runs, the changed systems and the node's health (sesam_health.py)."""
        return await SesamHealth(self.spec.api_url, self._http, self._headers).check(request)

    async def aclose(self) -> None:
        return None


async def _constant(value: _T) -> _T:
    """An awaitable of a value already known, to sit beside real reads in one gather."""
    return value


def create(spec: Spec, deps: TargetDeps) -> SesamTarget:
    return SesamTarget(spec, deps)

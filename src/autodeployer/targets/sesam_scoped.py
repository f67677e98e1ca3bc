"""Secrets scoped to one system, opt-in removal of secrets, and systems the node would re-create.

Three rules on top of :mod:`.sesam_values`, all planned before any write (the target does the HTTP):

* **System-scoped secrets.** ``SYNC_ROOT/secrets/systems/<system-id>.json`` names the secrets the node
  keeps for that system alone (``/api/systems/<id>/secrets``): a JSON list of names, or an object of
  node name -> source name when two systems need different values under one name (``password``).
  Names only: values come from the secret source, as for global secrets. A ``$SECRET(name)`` of that
  system which the file names is resolved there, not globally. Values are merged (``POST``), never
  replaced, and sent only when new or changed (keyed hash), under the memory key
  ``systems/<id>/<name>`` (a global name never holds ``/``, so the two cannot collide).
* **Pruning** (``SECRETS_PRUNE=true``): a global secret this deployer uploaded before (it holds its
  fingerprint), that no configuration references any more and that no secret source holds, is
  deleted. Nothing else is: not ``jwt``, not a secret set by hand (no fingerprint), not one a source
  still holds, not one the node does not list.
* **Re-created systems.** A system whose ``type`` changes is deleted and created again by the node,
  and the node deletes a system's own secrets with it (reference section 5); a removed system loses
  them too. The plan says so, naming the secrets lost, because nothing in an entity diff shows it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import Refused
from ..model import Action, Change, Problem, Tree
from ..secret_sources import Fingerprinter, SecretSource, SecretSourceError
from ..secret_sources.base import check_name
from .sesam_refs import Ref
from .sesam_values import SecretValues, first_value

__all__ = [
    "PROTECTED",
    "SCOPED_DIR",
    "ScopedFile",
    "SystemSecretsPlan",
    "memory_key",
    "parse_scoped_files",
    "plan_prune",
    "plan_system_secrets",
    "recreated_systems",
    "scoped_refs",
]

SCOPED_DIR = "secrets/systems/"
#: Never pruned, whatever the fingerprints say: the node's own API token secret.
PROTECTED = frozenset({"jwt"})

LiveNames = Callable[[str], Awaitable[list[str]]]


def memory_key(system_id: str, name: str) -> str:
    """The fingerprint key of a system's secret; global secrets use their bare name."""
    return f"systems/{system_id}/{name}"


@dataclass(frozen=True)
class ScopedFile:
    """One ``secrets/systems/<id>.json``: node name -> source name."""

    system_id: str
    file: str  # as shown in messages (SYNC_ROOT included)
    names: Mapping[str, str]


def _names(doc: Any, shown: str) -> dict[str, str]:
    if isinstance(doc, list):
        pairs = [(n, n) for n in doc]
    elif isinstance(doc, dict):
        pairs = list(doc.items())
    else:
        raise Refused(f"{shown}: must be a JSON list of secret names, or an object of node name to source name")
    names: dict[str, str] = {}
    for node_name, source_name in pairs:
        for value in (node_name, source_name):
            if not isinstance(value, str):
                raise Refused(f"{shown}: secret names must be strings, got {json.dumps(value)[:40]}")
            try:
                check_name(shown, value)
            except SecretSourceError as exc:
                raise Refused(f"{shown}: {value!r} is not a valid secret name") from exc
        if node_name in names:
            raise Refused(f"{shown}: secret {node_name!r} is named twice")
        names[node_name] = source_name
    return names


def parse_scoped_files(tree: Tree, entities: Mapping[str, Mapping[str, Any]],
                       whitelisted: bool = False) -> dict[str, ScopedFile]:
    """The scoped-secret files of the tree, by system id; Refused naming the file when one is unusable
    or names a system that is not in the configuration. With a whitelist (``whitelisted``), a file of a
    system the whitelist leaves out is skipped: one repository serves several nodes."""
    found: dict[str, ScopedFile] = {}
    for path in sorted(tree.files):
        if not (path.startswith(SCOPED_DIR) and path.endswith(".json")):
            continue
        shown = f"{tree.sync_root}/{path}" if tree.sync_root else path
        system_id = path[len(SCOPED_DIR):].removesuffix(".json")
        if "/" in system_id:
            raise Refused(f"{shown}: scoped secrets are named secrets/systems/<system-id>.json, not in a sub-folder")
        entity = entities.get(system_id)
        if entity is None and whitelisted:
            continue
        if entity is None or not str(entity.get("type", "")).startswith("system:"):
            raise Refused(f"{shown}: names secrets of system {system_id!r}, which is not a system in the configuration")
        try:
            doc = json.loads(tree.files[path].data.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise Refused(f"{shown}: not valid JSON ({type(exc).__name__})") from None
        found[system_id] = ScopedFile(system_id, shown, _names(doc, shown))
    return found


def scoped_refs(refs: Sequence[Ref], scoped: Mapping[str, ScopedFile]) -> tuple[list[Ref], list[Ref]]:
    """``(refs resolved by a scoped file, the others)``: a system's ``$SECRET(name)`` its file names."""
    inside: list[Ref] = []
    outside: list[Ref] = []
    for ref in refs:
        file = scoped.get(ref.entity)
        (inside if ref.kind == "secret" and file is not None and ref.name in file.names else outside).append(ref)
    return inside, outside


@dataclass
class SystemSecretsPlan:
    """What the scoped secrets of one sync send: values by system, names to send, fingerprints."""

    values: dict[str, SecretValues] = field(default_factory=dict)
    to_send: dict[str, tuple[str, ...]] = field(default_factory=dict)  # system id -> node names
    fingerprints: dict[str, str] = field(default_factory=dict)  # memory_key -> keyed hash
    changes: list[Change] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.to_send)

    def secret_values(self) -> list[str]:
        """Every value, for the log redactor only."""
        return [v for values in self.values.values() for v in values.body(values.names()).values()]


async def plan_system_secrets(
    scoped: Mapping[str, ScopedFile],
    sources: Sequence[SecretSource],
    fingerprinter: Fingerprinter | None,
    last_sent: Mapping[str, str],
    live_names: LiveNames,
    fresh: Collection[str],
) -> SystemSecretsPlan:
    """Read every scoped secret from the sources and compare it with what was last sent.

    ``fresh``: systems without secrets after the config upload (new, or re-created by a type change),
    whose every scoped secret is sent. Refused naming file, system and secret when a value cannot be
    read, before anything is written.
    """
    plan = SystemSecretsPlan()
    if not scoped:
        return plan
    if not sources or fingerprinter is None:
        files = ", ".join(f.file for f in scoped.values())
        raise Refused(f"{files}: system secrets are named but no secret source is configured (VAULT_URL, "
                      "SECRETS_FILE or SECRET_<name>)")
    problems: list[Problem] = []
    for system_id, file in sorted(scoped.items()):
        values: dict[str, str] = {}
        for node_name, source_name in sorted(file.names.items()):
            try:
                value = await first_value(sources, source_name)
            except SecretSourceError as exc:
                problems.append(Problem(str(exc), file.file, system_id))
                continue
            if value is None:
                problems.append(Problem(f"secret {source_name!r} is in no secret source", file.file, system_id))
                continue
            values[node_name] = value
        if problems:
            continue
        on_node = set() if system_id in fresh else set(await live_names(system_id))
        send = []
        for name, value in sorted(values.items()):
            key = memory_key(system_id, name)
            plan.fingerprints[key] = fingerprinter.fingerprint(key, value)
            if name not in on_node:
                plan.changes.append(Change(Action.ADD, f"{system_id}/{name}", "system secret", f"{name}: added"))
                send.append(name)
            elif last_sent.get(key) != plan.fingerprints[key]:
                plan.changes.append(Change(Action.CHANGE, f"{system_id}/{name}", "system secret",
                                           f"{name}: changed"))
                send.append(name)
        plan.values[system_id] = SecretValues(values)
        if send:
            plan.to_send[system_id] = tuple(send)
    if problems:
        raise Refused("system secrets named in Git cannot be deployed", problems)
    return plan


async def plan_prune(
    last_sent: Mapping[str, str],
    wanted: Collection[str],
    live_names: Collection[str],
    sources: Sequence[SecretSource],
) -> tuple[list[str], list[str]]:
    """``(global secrets to delete, warnings)`` under ``SECRETS_PRUNE``.

    A candidate was uploaded by this deployer (it has a fingerprint), is listed by the node, is not
    ``wanted`` (referenced by the configuration) and not protected; it is deleted only when every
    source answers "not found". A source that fails keeps it, with a warning: never delete on a guess.
    """
    live = set(live_names)
    candidates = sorted(n for n in last_sent if "/" not in n and n in live and n not in wanted and n not in PROTECTED)
    delete: list[str] = []
    warnings: list[str] = []
    for name in candidates:
        try:
            value = await first_value(sources, name)
        except SecretSourceError as exc:
            warnings.append(f"secret {name!r} is kept (SECRETS_PRUNE): {exc}")
            continue
        if value is None:
            delete.append(name)
    return delete, warnings


def recreated_systems(desired: Mapping[str, Mapping[str, Any]], live: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Live systems the upload re-creates, by id, with why: the ``type`` changes (the node deletes the
    entity and creates a new one). Their own secrets are gone afterwards."""
    found: dict[str, str] = {}
    for entity in live:
        _id, kind = entity.get("_id"), str(entity.get("type", ""))
        want = desired.get(_id) if isinstance(_id, str) else None
        if want is None or not kind.startswith("system:"):
            continue
        new_kind = str(want.get("type", ""))
        if new_kind != kind:
            found[str(_id)] = f"type {kind} -> {new_kind}"
    return found


def loss_warning(system_id: str, why: str, names: Collection[str]) -> str:
    """One plan warning for a system losing its own secrets."""
    lost = (f"its own secrets ({', '.join(sorted(names))}) are deleted with it" if names
            else "it has no secrets of its own")
    return f"system {system_id} would be re-created by the node ({why}): {lost}"

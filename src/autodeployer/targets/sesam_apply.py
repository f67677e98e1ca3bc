"""The Sesam target's apply of a small plan: one write per changed pipe or system.

A push usually changes one pipe of hundreds. The replace-all upload (``PUT /config``) makes the node
parse, validate and store every entity again; at 1,000 entities that was the apply step's ~55 ms of a
push's ~240 ms (issue 18, target 4). When the plan changes few entities (at most :data:`EACH_MAX`
pipes or systems, no metadata, no system re-created under a new type, nothing in another config group),
each is written on its own, as the reference's per-entity endpoints allow:

* added: ``POST /pipes`` or ``POST /systems`` with a one-element array (201; 409 when it exists);
* changed: ``PUT /pipes/<id>/config`` or ``PUT /systems/<id>/config`` (200; 404 when absent);
* removed: ``DELETE /pipes/<id>`` or ``DELETE /systems/<id>`` (200; 404 is "gone already").

Order: systems before the pipes that may read them, removals of pipes before those of systems.

Failures. A validation refusal (400) stops at that entity: the error names it and the entities already
written (the node holds those; the next sync plans against what is live and finishes the rest), the
same as a replace-all refusal otherwise. An answer that says the node's state is not what the plan
assumed (404 on a change: the entity moved collection or was removed meanwhile; 409 on a create;
405/501: no such endpoint) makes the apply fall back to the replace-all upload of the whole desired
configuration, which is correct whatever was written before it. Everything else is a TargetError.

Pure planning plus one injected request function: the target does the HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import TargetError
from ..model import Action, ApplyReport, Plan, Problem
from .sesam_entities import as_list, entity_lookup
from .sesam_verify import collection_of, is_config_change
from .transport import error_detail

EACH_MAX = 16  # at most this many pipe/system changes are written one by one; more take one PUT /config
CONFIG_GROUP_KEY = "$config-group"  # an entity naming another config group: replace-all handles it
FALLBACK_STATUS = frozenset({404, 405, 409, 501})  # the node is not as planned, or lacks the endpoint

# (method, path under the API URL, JSON body or None) -> the node's answer
Send = Callable[[str, str, Any], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class Write:
    """One per-entity request of the apply."""

    action: Action
    collection: str  # "pipes" or "systems"
    id: str
    body: dict[str, Any] | None  # the entity as uploaded; None for a removal

    @property
    def method(self) -> str:
        return {Action.ADD: "POST", Action.CHANGE: "PUT", Action.REMOVE: "DELETE"}[self.action]

    @property
    def path(self) -> str:
        """Ids are URL-encoded with no safe characters (the reference: ``:`` becomes ``%3A``)."""
        if self.action is Action.ADD:
            return f"/{self.collection}"
        entity = f"/{self.collection}/{quote(self.id, safe='')}"
        return entity if self.action is Action.REMOVE else f"{entity}/config"

    @property
    def json(self) -> Any:
        """POST takes an array of configs; PUT one config; DELETE nothing."""
        return [self.body] if self.action is Action.ADD else self.body

    def label(self) -> str:
        return f"{self.collection[:-1]} {self.id}"


@dataclass
class Fallback(Exception):
    """The per-entity writes cannot finish the apply: the replace-all upload must."""

    reason: str


@dataclass
class EachOutcome:
    """What the per-entity writes did."""

    written: list[str] = field(default_factory=list)  # "POST pipe x", in order
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # validation errors a forced write stored anyway


def _order(write: Write) -> int:
    """Systems first (pipes may read them), then pipes; removals of pipes before those of systems."""
    if write.action is Action.REMOVE:
        return 2 if write.collection == "pipes" else 3
    return 0 if write.collection == "systems" else 1


def writes_for(plan: Plan, uploaded: Sequence[dict[str, Any]] | None,
               recreated: dict[str, str] | None = None, each_max: int = EACH_MAX) -> list[Write] | None:
    """The per-entity writes of `plan`, whose replace-all body is `uploaded`; None when the plan must be
    uploaded whole (too many changes, the metadata, a re-created system, another config group)."""
    changes = [c for c in plan.changes if is_config_change(c)]
    if uploaded is None or not changes or len(changes) > each_max or recreated:
        return None
    entity = entity_lookup(uploaded)
    writes: list[Write] = []
    for change in changes:
        collection = collection_of(change.kind)
        if collection is None:
            return None
        body = entity(change.id) if change.action is not Action.REMOVE else None
        if change.action is not Action.REMOVE and (body is None or _other_group(body)):
            return None
        writes.append(Write(change.action, collection, change.id, body))
    return sorted(writes, key=_order)


def _other_group(entity: dict[str, Any]) -> bool:
    metadata = entity.get("metadata")
    return isinstance(metadata, dict) and CONFIG_GROUP_KEY in metadata


async def write_each(writes: list[Write], send: Send) -> EachOutcome:
    """Send each write in order; stop at the first refusal (see the module docstring)."""
    outcome = EachOutcome()
    for write in writes:
        response = await send(write.method, write.path, write.json)
        status = response.status_code
        if write.action is Action.REMOVE and status == 404:
            outcome.written.append(f"{write.method} {write.label()} (gone already)")
            continue
        if status in FALLBACK_STATUS:
            raise Fallback(f"{write.method} {write.label()}: {status}" + _written_note(outcome))
        if status == 400:
            raise _refused(write, response, outcome)
        if status not in (200, 201):
            raise TargetError(f"{write.method} {write.label()}: {status} {error_detail(response)}"
                              + _written_note(outcome))
        outcome.written.append(f"{write.method} {write.label()}")
        _collect_messages(write, response, outcome)
    return outcome


def _refused(write: Write, response: httpx.Response, outcome: EachOutcome) -> TargetError:
    from .sesam import format_validation_items  # the replace-all's formatting, for the same messages

    body = _json(response)
    items = body.get("validation_errors") if isinstance(body, dict) else None
    errors, _ = format_validation_items(items)
    problems = [Problem(e) for e in errors] or [Problem(f"{write.label()}: {error_detail(response)}")]
    return TargetError(f"the node rejected the configuration at {write.label()} ({len(errors)} validation error(s))"
                       + _written_note(outcome), problems=problems)


def _written_note(outcome: EachOutcome) -> str:
    if not outcome.written:
        return "; nothing was written"
    return f"; written before it: {', '.join(outcome.written)}"


def _collect_messages(write: Write, response: httpx.Response, outcome: EachOutcome) -> None:
    """The node's warnings (and, when forced, errors) on what it stored: ``runtime.config-errors``."""
    body = _json(response)
    objects = body if isinstance(body, list) else [body]
    for obj in objects:
        runtime = obj.get("runtime") if isinstance(obj, dict) else None
        found = runtime.get("config-errors") if isinstance(runtime, dict) else None
        for err in found if isinstance(found, list) else []:
            if not isinstance(err, dict):
                continue
            line = f"{write.id}: {err.get('elements', '$')}: {err.get('msg', '')}"
            (outcome.errors if err.get("level", "error") == "error" else outcome.warnings).append(line)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def report_of(outcome: EachOutcome) -> ApplyReport:
    """The ApplyReport the replace-all would give for the same node messages, plus what was written."""
    report = ApplyReport(warnings=[f"the node warned: {w}" for w in outcome.warnings])
    report.warnings += [f"applied with error: {e}" for e in outcome.errors]
    report.details["validation_items"] = len(outcome.errors) + len(outcome.warnings)
    report.details["apply_mode"] = "per-entity"
    report.details["apply_writes"] = list(outcome.written)
    return report


async def apply_config(plan: Plan, uploaded: Sequence[dict[str, Any]], recreated: dict[str, str],
                       send: Send, replace_all: Callable[[list[dict[str, Any]]], Awaitable[ApplyReport]],
                       each_max: int = EACH_MAX) -> ApplyReport:
    """Per-entity writes when the plan is small, else (or on a fallback) the replace-all upload."""
    writes = writes_for(plan, uploaded, recreated, each_max)
    if writes is None:
        report = await replace_all(as_list(uploaded))
        report.details["apply_mode"] = "replace-all"
        return report
    try:
        return report_of(await write_each(writes, send))
    except Fallback as fallback:
        report = await replace_all(as_list(uploaded))
        report.details["apply_mode"] = "replace-all"
        report.details["apply_fallback"] = fallback.reason
        return report

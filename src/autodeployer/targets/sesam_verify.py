"""The Sesam target's read-back after an apply: only the entities the apply changed.

A push usually changes one pipe of hundreds. Reading back the whole configuration (``GET /config``)
makes the node render every entity and the deployer parse and diff them all again, which was the
largest step of a push's sync (~70 ms of ~200 ms at 1,000 entities). The replace-all upload leaves
every entity that was not in the plan as it was (equal to Git when the plan was made), so the read-back
asks the node for each changed pipe or system alone (``GET /pipes/<id>/config``,
``GET /systems/<id>/config``): an added or changed one must be stored as uploaded, a removed one
must be gone (404). The semantics of the whole read are kept where it is the cheaper or the only
sound way: more than :data:`EACH_MAX` changes, or a change to the node metadata (which has no
per-entity config endpoint of this shape), read back the whole configuration as before.

Pure planning plus one injected read: the target does the HTTP (``SesamTarget._read_entity``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..jsondiff import unified
from ..model import Action, Change, Plan
from .sesam_entities import entity_lookup

EACH_MAX = 16  # changed entities read back one by one up to this many; more take one GET /config
CONCURRENCY = 4  # per-entity reads in flight at once: a few overlap the round trips, more only queue

# (collection, _id) -> the entity's config as the node stores it, or None when it has none (404)
EntityReader = Callable[[str, str], Awaitable[dict[str, Any] | None]]
Normalise = Callable[[dict[str, Any]], dict[str, Any]]


def is_config_change(change: Change) -> bool:
    """A pipe, system or metadata change (the plan also lists variables and secrets)."""
    return change.kind in ("pipe", "metadata") or change.kind.startswith("system:")


def collection_of(kind: str) -> str | None:
    """The per-entity API collection of an entity type; None for the metadata (read whole instead)."""
    if kind == "pipe":
        return "pipes"
    if kind.startswith("system:"):
        return "systems"
    return None


@dataclass(frozen=True)
class Expected:
    """One entity the apply touched: where to read it, and what must be there (None: nothing)."""

    collection: str
    id: str
    kind: str
    want: dict[str, Any] | None


@dataclass(frozen=True)
class ReadBack:
    """The per-entity read-back of one apply."""

    expected: tuple[Expected, ...]

    @classmethod
    def of(cls, plan: Plan, uploaded: Sequence[dict[str, Any]] | None) -> ReadBack | None:
        """The read-back of `plan`, whose config upload was `uploaded` (None: no config was uploaded);
        None when the whole configuration must be read back instead."""
        changes = [c for c in plan.changes if is_config_change(c)]
        if uploaded is None:
            return cls(()) if not changes else None
        if len(changes) > EACH_MAX:
            return None
        entity = entity_lookup(uploaded)
        expected: list[Expected] = []
        for change in changes:
            collection = collection_of(change.kind)
            want = entity(change.id) if change.action is not Action.REMOVE else None
            if collection is None or (change.action is not Action.REMOVE and want is None):
                return None  # the metadata, or an entity the upload does not hold: no shortcut
            expected.append(Expected(collection, change.id, change.kind, want))
        return cls(tuple(expected))

    async def run(self, read: EntityReader, normalise: Normalise) -> list[Change]:
        """What still differs after reading each entity back: an empty list when the apply took."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def check(item: Expected) -> Change | None:
            async with gate:
                have = await read(item.collection, item.id)
            return remaining(item, None if have is None else normalise(have))

        found = await asyncio.gather(*(check(item) for item in self.expected))
        return sorted((c for c in found if c is not None), key=lambda c: c.id)


def remaining(item: Expected, have: dict[str, Any] | None) -> Change | None:
    """The change still needed for one entity, given what the node holds (already normalised)."""
    if item.want is None:
        if have is None:
            return None
        return Change(Action.REMOVE, item.id, item.kind, unified(have, None, item.id))
    if have is None:
        return Change(Action.ADD, item.id, item.kind, unified(None, item.want, item.id))
    if have != item.want:
        return Change(Action.CHANGE, item.id, item.kind, unified(have, item.want, item.id))
    return None

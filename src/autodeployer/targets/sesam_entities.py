"""The desired Sesam entities without holding them: a digest per entity, the entity rebuilt on demand.

The parsed desired state is cached per tree (drift checks) and per file (ParseMemo). Holding every
entity as dicts cost ~100 MB at 50,000 entities (issue 18). A no-change cycle needs only each entity's
digest (sesam_live.entity_digest); the full entity is needed only for the few that differ (the diff
text), for the deployer's own system, and for an upload's whole body. :class:`LazyEntities` is the
``Mapping`` the plan code always used, but it re-reads an entity from its file's bytes (kept by the
tree anyway) when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, overload


class Record(NamedTuple):
    """One entity of a parsed file: what the comparison and the cross-file checks need (a NamedTuple: one
    is made per file of a cold parse, ~3x cheaper than a frozen dataclass)."""

    id: str
    kind: str
    digest: bytes
    position: int  # among the file's items (an object file: 0)


Loader = Callable[[str, bytes], list[Any]]  # (path, file bytes) -> the file's items, as parsed


class LazyEntities(Mapping[str, dict[str, Any]]):
    """Desired entities by ``_id``, each parsed again from its file when read; `extra` ones (live entities
    the plan keeps) are held as they are."""

    def __init__(self, where: dict[str, tuple[str, int]], data: Mapping[str, bytes], load: Loader,
                 strip: Callable[[dict[str, Any]], dict[str, Any]],
                 extra: Mapping[str, dict[str, Any]] | None = None) -> None:
        self._where = where
        self._data = data
        self._load = load
        self._strip = strip
        self._extra: dict[str, dict[str, Any]] = dict(extra or {})

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key in self._extra:
            return self._extra[key]
        path, index = self._where[key]
        item = self._load(path, self._data[path])[index]
        if not isinstance(item, dict):  # cannot happen for a record that passed the checks
            raise KeyError(key)
        return self._strip(item)

    def __contains__(self, key: object) -> bool:
        return key in self._extra or key in self._where

    def __iter__(self) -> Iterator[str]:
        yield from self._where
        yield from (k for k in self._extra if k not in self._where)

    def __len__(self) -> int:
        return len(self._where) + sum(1 for k in self._extra if k not in self._where)

    def with_extra(self, kept: Mapping[str, dict[str, Any]]) -> LazyEntities:
        """The same entities, with `kept` ones (held whole) replacing or added to them."""
        return LazyEntities(self._where, self._data, self._load, self._strip, {**self._extra, **kept})


def with_kept(entities: Mapping[str, dict[str, Any]], kept: Mapping[str, dict[str, Any]]
              ) -> Mapping[str, dict[str, Any]]:
    """`entities` with `kept` ones replacing or added to them, without materialising lazy ones."""
    if isinstance(entities, LazyEntities):
        return entities.with_extra(kept)
    return {**entities, **kept}


class UploadBody(Sequence[dict[str, Any]]):
    """The whole ``PUT /config`` body of a plan, built only when read: a no-change plan never needs it,
    and building it reads every desired entity again."""

    def __init__(self, build: Callable[[], list[dict[str, Any]]],
                 entities: Mapping[str, dict[str, Any]] | None = None) -> None:
        self._build = build
        self._items: list[dict[str, Any]] | None = None
        self.entities = entities  # the body's entities by _id, each read alone (a per-entity apply)

    def materialise(self) -> list[dict[str, Any]]:
        if self._items is None:
            self._items = self._build()
        return self._items

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        return self.materialise()[index]

    def __len__(self) -> int:
        return len(self.materialise())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, UploadBody):
            other = other.materialise()
        return isinstance(other, list) and self.materialise() == other

    __hash__ = None  # type: ignore[assignment]


def as_list(body: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The whole upload body (built now when it is lazy)."""
    return body.materialise() if isinstance(body, UploadBody) else list(body)


def entity_lookup(body: Sequence[dict[str, Any]]) -> Callable[[str], dict[str, Any] | None]:
    """One entity of an upload body by _id, without building a lazy body: a plan changing one pipe of
    50,000 reads that pipe's file again, not every file (issue 18)."""
    if isinstance(body, UploadBody) and body.entities is not None:
        return body.entities.get
    return {str(e.get("_id")): e for e in body}.get

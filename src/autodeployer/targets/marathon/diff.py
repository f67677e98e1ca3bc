"""Marathon semantic diff: live apps compared on the fields Git sets, and the payload apply writes.

Marathon's server-side defaults never show as a change; a field deleted from Git does, because the
specs of the last successful apply (the target memory) say it was set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...jsondiff import unified
from ...model import Action, Change, Plan
from .desired import LABEL, RUNTIME_FIELDS, Desired

MAP_FIELDS = frozenset({"env", "labels"})  # compared as whole maps, not key by key


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


"""Marathon desired state: the spec files of a tree parsed into apps and groups with absolute ids.

Every problem is collected before the tree is refused, each naming its file and app or group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ...errors import Refused
from ...jsondiff import JSONProblem, loads_strict
from ...model import Problem, Tree

LABEL = "DPLOY"  # every app carries DPLOY=<app_name>: how the apps we own are found again
MAX_SPEC_BYTES = 10 * 1024 * 1024
# Fields Marathon computes itself: never desired state (a spec copied from GET output carries them).
RUNTIME_FIELDS = frozenset(
    {"version", "versionInfo", "tasksStaged", "tasksRunning", "tasksHealthy", "tasksUnhealthy",
     "deployments", "tasks", "lastTaskFailure", "readinessCheckResults", "taskStats"}
)
GROUP_KEYS = frozenset({"id", "apps", "groups", "dependencies"})
_SEGMENT = re.compile(r"(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])")


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


"""Domain objects shared by sources, targets, the reconciler, the store and the web layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Trigger(str, enum.Enum):
    """Why a sync ran."""

    POLL = "poll"
    WEBHOOK = "webhook"
    MANUAL = "manual"
    STARTUP = "startup"
    ROLLBACK = "rollback"


class Result(str, enum.Enum):
    """Outcome of one sync attempt, as recorded in history."""

    RUNNING = "running"  # written when an attempt starts; replaced when it ends
    SYNCED = "synced"  # changes applied and verified
    NO_CHANGE = "no-change"  # target already equal to Git
    PLANNED = "planned"  # dry run with changes to make
    REFUSED = "refused"  # a guard refused the commit; target untouched
    FAILED = "failed"  # source, target or verification error
    INTERRUPTED = "interrupted"  # the process died during the attempt

    @property
    def ok(self) -> bool:
        return self in (Result.SYNCED, Result.NO_CHANGE, Result.PLANNED)


@dataclass(frozen=True)
class SourceFile:
    """One file of the tree under SYNC_ROOT, read from Git objects."""

    path: str  # relative to SYNC_ROOT, forward slashes
    data: bytes
    mode: str  # git mode: 100644, 100755, 120000 (symlink)
    size: int = -1  # size of the blob; data is empty when the blob exceeded the read limit

    @property
    def is_symlink(self) -> bool:
        return self.mode == "120000"

    @property
    def oversize(self) -> bool:
        return self.size > len(self.data)


@dataclass(frozen=True)
class Tree:
    """The files under SYNC_ROOT at one commit."""

    revision: str  # commit sha
    tree_id: str  # oid of the SYNC_ROOT tree ("" when SYNC_ROOT does not exist)
    files: dict[str, SourceFile]
    sync_root: str = ""


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    message: str  # first line
    author: str
    timestamp: int


@dataclass(frozen=True)
class Problem:
    """A reason to refuse a commit, pinned to the file and entity it concerns."""

    message: str
    file: str | None = None
    entity: str | None = None

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.file, self.entity) if p)
        return f"{where}: {self.message}" if where else self.message


class Action(str, enum.Enum):
    ADD = "add"
    CHANGE = "change"
    REMOVE = "remove"


@dataclass(frozen=True)
class Change:
    """One entity that differs between Git and the target."""

    action: Action
    id: str
    kind: str  # entity type: pipe, system:url, app, group, tree ...
    diff: str = ""  # readable unified diff of the entity

    def headline(self) -> str:
        sign = {Action.ADD: "+", Action.CHANGE: "~", Action.REMOVE: "-"}[self.action]
        return f"{sign} {self.kind} {self.id}"


@dataclass
class Plan:
    """What a sync would change; `payload` is whatever the target needs to apply it."""

    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    payload: Any = None
    desired_count: int = 0
    live_count: int = 0
    empties_target: bool = False  # the plan removes every managed entity from a target that has some

    @property
    def empty(self) -> bool:
        return not self.changes

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action)

    def summary(self) -> str:
        if self.empty:
            return "no changes"
        parts = [
            f"{self.count(a)} {word}"
            for a, word in ((Action.ADD, "added"), (Action.CHANGE, "changed"), (Action.REMOVE, "removed"))
            if self.count(a)
        ]
        return ", ".join(parts)

    def render(self) -> str:
        """The plan as text: one headline per change followed by its diff."""
        lines: list[str] = []
        for change in self.changes:
            lines.append(change.headline())
            if change.diff:
                lines.extend("    " + line for line in change.diff.rstrip("\n").splitlines())
        return "\n".join(lines)


@dataclass
class ApplyReport:
    """What the target said while applying."""

    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] | None = None  # target memory to keep for the next sync


@dataclass
class SyncResult:
    app: str
    trigger: Trigger
    result: Result
    revision: str | None = None
    summary: str = ""
    diff: str = ""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    started_at: float = 0.0
    duration: float = 0.0
    drift: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result.ok

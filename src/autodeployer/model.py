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
    HELD = "held"  # a sync window or a promotion held the revision back; deployed once the policy allows it

    @property
    def ok(self) -> bool:
        return self in (Result.SYNCED, Result.NO_CHANGE, Result.PLANNED)

    @property
    def label(self) -> str:
        """How people read it: the status page's badge, the CLI."""
        return _RESULT_LABELS[self]

    @property
    def status(self) -> Status:
        """Where an app whose last attempt ended so stands (unless it is suspended)."""
        return _RESULT_STATUS[self]

    @property
    def style(self) -> str:
        """The colour the CLI prints it in (a rich/click colour name)."""
        return "yellow" if self in (Result.PLANNED, Result.HELD) else "green" if self.ok else "red"

    @classmethod
    def parse(cls, value: str | None) -> Result | None:
        """A stored or received value; None for none and for one this version does not know."""
        try:
            return cls(value) if value is not None else None
        except ValueError:
            return None


class Status(str, enum.Enum):
    """Where an app stands: the API's `status`, the status page's badge, the CLI's colour."""

    SYNCED = "synced"
    OUT_OF_SYNC = "out-of-sync"
    FAILED = "failed"
    REFUSED = "refused"
    SUSPENDED = "suspended"
    PENDING = "pending"
    HELD = "held"  # a new revision waits for a sync window or for the app it is promoted from

    @property
    def label(self) -> str:
        return _STATUS_LABELS[self]

    @property
    def style(self) -> str:
        """The colour the CLI prints it in (a rich colour name)."""
        return _STATUS_STYLES[self]

    @property
    def trouble(self) -> bool:
        """An operator has something to look at: the page lists its error and problems."""
        return self in (Status.FAILED, Status.REFUSED)


class Reason(str, enum.Enum):
    """Why an attempt did not end in sync; stored with its history row and the app's state.

    A sync that ended well has none. The reason tells an operator where to look (Git, the guard,
    the target's reachability, the configuration the target rejected, the read-back) without parsing
    the error text.
    """

    SOURCE_UNAVAILABLE = "source-unavailable"  # Git could not be reached or read
    REFUSED = "refused"  # a guard refused the commit (invalid file, empty plan, ...)
    TARGET_UNAVAILABLE = "target-unavailable"  # the target did not answer, or not as expected
    REJECTED = "rejected-by-target"  # the target refused the configuration, naming what is wrong
    DRIFT = "verify-drift"  # applied, but reading back found the target still differing
    NOT_OWNER = "not-owner"  # another process or replica holds the app: nothing applied
    INTERRUPTED = "interrupted"  # the process stopped during the attempt
    INTERNAL = "internal"  # a bug: the error names the exception
    UNSIGNED = "unsigned"  # VERIFY_COMMITS: the commit is not signed by a trusted key; nothing applied
    HELD = "held"  # the app's rollout policy (a sync window, a promotion) holds the revision back

    @property
    def label(self) -> str:
        return _REASON_LABELS[self]

    @classmethod
    def parse(cls, value: str | None) -> Reason | None:
        try:
            return cls(value) if value is not None else None
        except ValueError:
            return None


# The one place these words are spelled; a test checks every member has each.
_RESULT_LABELS = {
    Result.RUNNING: "running", Result.SYNCED: "synced", Result.NO_CHANGE: "no change", Result.PLANNED: "planned",
    Result.REFUSED: "refused", Result.FAILED: "failed", Result.INTERRUPTED: "interrupted",
    Result.HELD: "held",
}
_RESULT_STATUS = {
    Result.RUNNING: Status.PENDING, Result.SYNCED: Status.SYNCED, Result.NO_CHANGE: Status.SYNCED,
    Result.PLANNED: Status.OUT_OF_SYNC, Result.REFUSED: Status.REFUSED, Result.FAILED: Status.FAILED,
    Result.INTERRUPTED: Status.FAILED, Result.HELD: Status.HELD,
}
_STATUS_LABELS = {
    Status.SYNCED: "synced", Status.OUT_OF_SYNC: "out of sync", Status.FAILED: "failed", Status.REFUSED: "refused",
    Status.SUSPENDED: "suspended", Status.PENDING: "pending", Status.HELD: "held",
}
_STATUS_STYLES = {
    Status.SYNCED: "green", Status.OUT_OF_SYNC: "yellow", Status.FAILED: "red", Status.REFUSED: "red",
    Status.SUSPENDED: "magenta", Status.PENDING: "cyan", Status.HELD: "yellow",
}
_REASON_LABELS = {
    Reason.SOURCE_UNAVAILABLE: "source unavailable", Reason.REFUSED: "refused",
    Reason.TARGET_UNAVAILABLE: "target unavailable", Reason.REJECTED: "rejected by target",
    Reason.DRIFT: "verify found drift", Reason.NOT_OWNER: "not owner", Reason.INTERRUPTED: "interrupted",
    Reason.INTERNAL: "internal error",
    Reason.UNSIGNED: "not signed by a trusted key",
    Reason.HELD: "held by rollout policy",
}


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
    reason: Reason | None = None  # why it did not end in sync; None when it did
    retry_after: float | None = None  # seconds: not applied because the app was busy elsewhere; try again then
    failures: int | None = None  # consecutive failed or refused attempts after this one (None: not recorded)
    wake_at: float | None = None  # epoch seconds: held until then (a window opens, a soak ends); the worker wakes

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def not_applied(self) -> bool:
        """Nothing was applied because another process or replica holds the app (not a failure)."""
        return self.reason is Reason.NOT_OWNER


class Health(str, enum.Enum):
    """What one look at a deployed revision found (rollout/health.py): the verdict of a health window."""

    CHECKING = "checking"  # not decided yet (a deployment still finishing, the window still open)
    HEALTHY = "healthy"
    DEGRADED = "degraded"


@dataclass(frozen=True)
class HealthReport:
    """One reading of a target's health after a deploy; `evidence` names entity and fact, never a secret."""

    state: Health
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthNotice:
    """What reporters are told when a deployed revision turned degraded (rollout/autorollback.py).

    `event`: "degraded" (left in place), "rolled-back" (rolled back to `rollback_to`), "rollback-failed"
    (the rollback did not deploy) or "rollback-degraded" (the rollback is degraded too): each is said once.
    """

    app: str
    event: str
    revision: str
    evidence: tuple[str, ...]
    rollback_to: str | None = None
    detail: str = ""

    @property
    def description(self) -> str:
        """One line for a commit status (GitHub keeps 140 characters) and a notification's headline."""
        evidence = "; ".join(self.evidence) or "health check failed"
        words = {"rolled-back": "rolled back", "rollback-failed": "degraded, rollback failed",
                 "rollback-degraded": "degraded, and so is the rollback"}.get(self.event, "degraded")
        return f"{words}: {evidence}"

"""The few exception types the rest of the code may raise and catch on purpose."""

from __future__ import annotations

from .model import Problem


class AutodeployerError(Exception):
    """Base class: its message is safe to show to an operator (no secrets)."""


class ConfigError(AutodeployerError):
    """Settings are missing or invalid; names the variable or key at fault."""


class SourceError(AutodeployerError):
    """The Git repository could not be reached or read."""


class TargetError(AutodeployerError):
    """The target failed to answer or to apply; `problems` name the entities at fault, if known."""

    def __init__(self, message: str, *, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class Refused(AutodeployerError):
    """A guard refused the commit; the target has not been touched."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        base = super().__str__()
        if not self.problems:
            return base
        return base + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class StoreUnavailable(AutodeployerError):
    """The shared store (PostgreSQL) cannot be reached; the message says why, without credentials."""


class OwnershipLost(AutodeployerError):
    """This replica may not apply the app now: another replica owns it, or ownership cannot be proven.

    Nothing was written to the target. `retry_after` (seconds) is set when the same replica should try
    again soon (another replica's attempt is still running), None when the app has moved away.
    """

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after

"""Rollout policy of an app: sync windows (`windows.py`) and promotion from another app (`promotion.py`),
consulted by the reconciler through `gate.py` before it writes to the target; after it, the deploy's health
(`health.py`) and the automatic rollback of a degraded deploy (`autorollback.py`).

This package file imports nothing of the project, so `config/loader.py` can use `windows.py` without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hold:
    """Why a revision is not deployed now, and when to look again.

    `until` is when the policy may let it through (a window's opening, a soak's end): the app's worker
    wakes then without a new push. None: look again at the next poll (e.g. the upstream app failed)."""

    by: str  # "window" or "promotion"
    reason: str  # one line, e.g. "held by window deny '0 16 * * FRI' for 64h (Europe/Oslo) until Mon 08:00 CET"
    until: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        """What the history row's details keep of it (`details["held"]`)."""
        return {"held": {"by": self.by, "reason": self.reason, "until": self.until, **self.facts}}

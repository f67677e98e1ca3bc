"""How long each step of one sync took: the per-step breakdown stored on the history row.

A sync's total duration says that it was slow, not where. `StepTimings` is handed through the steps
of one sync (resolve, fetch, read, plan, guard, apply, verify, record) and times each around its
call, so the reconcile stays a list of step calls; the figures end up in
`SyncResult.details["timings"]` (milliseconds, stored with the history row without a schema change)
and in the `autodeployer_sync_step_seconds` histogram of `/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

STEPS = ("resolve", "fetch", "read", "plan", "guard", "apply", "verify", "record")
DETAILS_KEY = "timings"


class StepTimings:
    """Milliseconds per step of one sync; a step that ran twice (never today) adds up."""

    def __init__(self) -> None:
        self._ms: dict[str, float] = {}

    def add(self, step: str, seconds: float) -> None:
        self._ms[step] = self._ms.get(step, 0.0) + seconds * 1000.0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a synchronous step (the guard); a step that raises is timed too."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    async def timed(self, name: str, awaitable: Awaitable[T]) -> T:
        """Await one step and time it (a step that raises is timed too: a slow failure is worth seeing)."""
        start = time.perf_counter()
        try:
            return await awaitable
        finally:
            self.add(name, time.perf_counter() - start)

    def as_details(self) -> dict[str, float]:
        """The figures in step order, rounded to µs: what goes into `details["timings"]`."""
        order = {step: i for i, step in enumerate(STEPS)}
        return {k: round(v, 3) for k, v in sorted(self._ms.items(), key=lambda kv: order.get(kv[0], len(order)))}


def step_seconds(details: dict[str, Any]) -> list[tuple[str, float]]:
    """(step, seconds) pairs from a result's details; nothing when it has no (or no valid) timings.

    Details come back from the store as JSON too, so the values are checked rather than trusted."""
    raw = details.get(DETAILS_KEY)
    if not isinstance(raw, dict):
        return []
    return [(str(step), float(ms) / 1000.0) for step, ms in raw.items()
            if isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms >= 0]

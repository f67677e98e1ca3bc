"""In-process fakes for tests of the reconcile that need a target's behaviour, not a service's.

``FakeTarget`` keeps its live state in a dict and records what it is asked to do; ``MemoryStore``
is the product's SQLite store on an in-memory database with a log of its writes. With
:func:`reconciler`, a test drives the product's own ``Reconciler`` (real Git source, real reporters)
inside the test process: no CLI subprocess, no emulator. End-to-end tests keep using the emulators.

Here rather than in ``src/autodeployer/testing.py``: they are test scaffolding, and shipping them
in the wheel would make them an interface the product has to keep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from autodeployer.config.loader import load_config
from autodeployer.errors import Refused, TargetError
from autodeployer.model import Action, ApplyReport, Change, Plan, Problem
from autodeployer.reconcile import Reconciler
from autodeployer.runtime import build_runtime
from autodeployer.store import SQLiteStore
from autodeployer.targets.base import SyncContext


def _changes(desired: Mapping[str, str], live: Mapping[str, str]) -> list[Change]:
    """What differs, one change per path: the diff a real target computes, without the semantics."""
    changes = [Change(Action.ADD if path not in live else Action.CHANGE, path, "file")
               for path, text in sorted(desired.items()) if live.get(path) != text]
    changes += [Change(Action.REMOVE, path, "file") for path in sorted(live) if path not in desired]
    return changes


class FakeTarget:
    """A target whose live state is ``live``: one entry per file of the tree, path -> text.

    It implements the ``Target`` protocol and can be told to refuse every plan (``refuse_with``),
    to fail every apply (``fail_with``) and to take ``delay`` seconds for every read and apply.
    """

    kind = "fake"

    def __init__(self, live: Mapping[str, str] | None = None) -> None:
        self.live: dict[str, str] = dict(live or {})
        self.reads = 0  # live-state reads: prefetch, plan without a prefetch, verify
        self.applied: list[Plan] = []  # every successful apply, in order
        self.applied_at: list[float] = []  # time.monotonic() of each
        self.delay = 0.0
        self.fail_with: str | None = None
        self.refuse_with: str | None = None

    def prefetch(self) -> asyncio.Task[dict[str, str]]:
        return asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> dict[str, str]:
        self.reads += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return dict(self.live)

    async def plan(self, ctx: SyncContext) -> Plan:
        if self.refuse_with is not None:
            raise Refused(self.refuse_with, [Problem(self.refuse_with)])
        desired = {path: file.data.decode() for path, file in ctx.tree.files.items()}
        live = await ctx.prefetched if ctx.prefetched is not None else await self._read()
        return Plan(changes=_changes(desired, live), payload=desired, desired_count=len(desired),
                    live_count=len(live))

    async def apply(self, plan: Plan, ctx: SyncContext) -> ApplyReport:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise TargetError(self.fail_with)
        self.live = dict(plan.payload)
        self.applied.append(plan)
        self.applied_at.append(time.monotonic())
        return ApplyReport()

    async def verify(self, plan: Plan, ctx: SyncContext) -> Plan:
        return Plan(changes=_changes(plan.payload, await self._read()))

    async def aclose(self) -> None:
        return None


#: The methods of the ``Store`` protocol that write (``update_state`` is the field-level write of
#: the protocol's next version): ``MemoryStore`` logs a call to whichever of them the store has.
WRITES = ("begin", "finish", "put_state", "update_state", "annotate")


class MemoryStore(SQLiteStore):
    """The SQLite store on an in-memory database, logging each write (``writes``: method names).

    The product's own store rather than a second implementation of the ``Store`` protocol, so it
    follows every change of that protocol; only the write log is added.
    """

    def __init__(self) -> None:
        super().__init__(None)
        self.writes: list[str] = []
        for name in WRITES:
            if hasattr(self, name):
                setattr(self, name, self._logged(name, getattr(self, name)))

    def _logged(self, name: str, write: Callable[..., Any]) -> Callable[..., Any]:
        def logged(*args: Any, **kwargs: Any) -> Any:
            self.writes.append(name)
            return write(*args, **kwargs)
        return logged


@asynccontextmanager
async def reconciler(environ: Mapping[str, str], target: Any,
                     store: SQLiteStore | None = None) -> AsyncIterator[Reconciler]:
    """The reconciler of the one app ``environ`` configures, built by the product's own wiring
    (Git source, commit-status reporter), with ``target`` in place of the configured one."""
    config = load_config(dict(environ))
    runtime = build_runtime(config, store=store or MemoryStore())
    rec = runtime.reconcilers[config.apps[0].name]
    await rec.target.aclose()
    rec.target = target
    try:
        yield rec
    finally:
        await runtime.aclose()

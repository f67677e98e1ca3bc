"""The Sesam target's read-back after an apply (targets/sesam_verify.py), end to end: the product's
reconciler against a real Git server and the Sesam emulator over HTTP.

A node that does not keep what was uploaded (here: its configuration put back right after the PUT)
must fail the sync with `verify drift`, whether the lost change is a changed pipe or a removal; a
read-back that was skipped would call both synced. A few changes are read back one entity at a time,
many (or the metadata) with the whole `GET /config`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from autodeployer.config.loader import load_config
from autodeployer.model import ApplyReport, Plan, Reason, Result, SyncResult, Trigger
from autodeployer.runtime import build_runtime
from autodeployer.targets.base import SyncContext
from autodeployer.targets.sesam_verify import EACH_MAX
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..fakes import MemoryStore
from ..helpers import BASE_METADATA, BASE_PIPES, BASE_SYSTEMS, entity_json, pipe, system


class AfterApply:
    """The real Sesam target, with something done to the node right after its apply."""

    def __init__(self, inner: Any, after: Callable[[], None]) -> None:
        self.inner, self.after, self.kind = inner, after, inner.kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def apply(self, plan: Plan, ctx: SyncContext) -> ApplyReport:
        report: ApplyReport = await self.inner.apply(plan, ctx)
        self.after()
        return report


@asynccontextmanager
async def sesam_reconciler(env: dict[str, str], after: Callable[[], None] | None = None) -> AsyncIterator[Any]:
    runtime = build_runtime(load_config({**env, "COMMIT_STATUS": "false"}), store=MemoryStore())
    rec = runtime.reconcilers["node"]
    if after is not None:
        rec.target = AfterApply(rec.target, after)
    try:
        yield rec
    finally:
        await runtime.aclose()


def sync(env: dict[str, str], after: Callable[[], None] | None = None) -> SyncResult:
    async def run() -> SyncResult:
        async with sesam_reconciler(env, after) as rec:
            return await rec.sync(Trigger.MANUAL)
    return asyncio.run(run())


def base_entities() -> list[dict[str, Any]]:
    return [*BASE_PIPES, *BASE_SYSTEMS, BASE_METADATA]


def reads_after_put(sesam: SesamEmulator) -> list[str]:
    """The GETs the service made after its config upload (whole, or its last per-entity write), in order."""
    requests = sesam.requests
    puts = [i for i, r in enumerate(requests) if is_config_write(r.method, r.path)]
    assert puts, "no config write"
    return [r.path for r in requests[puts[-1] + 1:] if r.method == "GET"]


def is_config_write(method: str, path: str) -> bool:
    """``PUT /api/config`` or a per-entity write of sesam_apply (POST, PUT .../config, DELETE)."""
    if method == "PUT" and path == "/api/config":
        return True
    entity = path.startswith(("/api/pipes", "/api/systems")) and "/secrets" not in path
    return entity and (method in ("POST", "DELETE") or (method == "PUT" and path.endswith("/config")))


def first_sync(env: dict[str, str], sesam: SesamEmulator) -> None:
    assert sync(env).result is Result.SYNCED
    sesam.reset_log()


def test_a_change_the_node_did_not_keep_fails_verification(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    first_sync(app_env, sesam)
    config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="changed"))})
    result = sync(app_env, after=lambda: sesam.load(base_entities()))  # the node puts the old pipe back
    assert result.result is Result.FAILED, result.summary
    assert result.reason is Reason.DRIFT
    assert "verification failed" in (result.error or "") and "(1 changed)" in (result.error or ""), result.error
    assert reads_after_put(sesam) == ["/api/pipes/orders/config"]


def test_a_removal_that_did_not_take_fails_verification(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    first_sync(app_env, sesam)
    config_repo.commit_and_push({"pipes/customers.conf.json": None})
    result = sync(app_env, after=lambda: sesam.load(base_entities()))  # the removed pipe is back
    assert result.result is Result.FAILED, result.summary
    assert result.reason is Reason.DRIFT
    assert "(1 removed)" in (result.error or ""), result.error
    assert reads_after_put(sesam) == ["/api/pipes/customers/config"]


def test_changed_entities_are_read_back_one_by_one(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    """An add (an id with ":", sent as %3A), a change, a removal and a pipe turned into a system: four
    reads, no GET /config."""
    first_sync(app_env, sesam)
    config_repo.commit_and_push({
        "pipes/erp:orders.conf.json": entity_json(pipe("erp:orders", dataset="erp")),
        "pipes/orders.conf.json": entity_json(pipe("orders", dataset="changed")),
        "systems/crm.conf.json": None,
        "pipes/customers.conf.json": None,
        "systems/customers.conf.json": entity_json(system("customers")),
    })
    result = sync(app_env)
    assert result.result is Result.SYNCED, result.error
    assert sorted(reads_after_put(sesam)) == ["/api/pipes/erp:orders/config", "/api/pipes/orders/config",
                                              "/api/systems/crm/config", "/api/systems/customers/config"]
    stored = {e["_id"]: e for e in sesam.entities()}
    assert stored["customers"]["type"] == "system:url" and "crm" not in stored and "erp:orders" in stored


def test_many_changes_or_the_metadata_are_read_back_whole(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    first_sync(app_env, sesam)
    many = {f"pipes/p{i}.conf.json": entity_json(pipe(f"p{i}")) for i in range(EACH_MAX + 1)}
    config_repo.commit_and_push(many)
    assert sync(app_env).result is Result.SYNCED
    assert reads_after_put(sesam) == ["/api/config"]

    sesam.reset_log()
    metadata = {**BASE_METADATA, "namespaced_identifiers": True}
    config_repo.commit_and_push({"node-metadata.conf.json": entity_json(metadata)})
    seeded = sesam.entities()
    result = sync(app_env, after=lambda: sesam.load(seeded))  # the node keeps its old metadata
    assert result.result is Result.FAILED and result.reason is Reason.DRIFT, result.summary
    assert reads_after_put(sesam) == ["/api/config"]

"""The Sesam target's per-entity apply (targets/sesam_apply.py), end to end: the product's reconciler
against a real Git server and the Sesam emulator over HTTP, whose request log shows which endpoints
were called.

A plan changing a few pipes or systems writes each on its own (POST / PUT .../config / DELETE) and never
the replace-all ``PUT /api/config``; more changes than SESAM_APPLY_EACH_MAX, or the metadata, take the
replace-all; a node whose state is not what the plan assumed makes the apply fall back to it; a refused
entity stops the apply with an error naming it and what was written before it."""

from __future__ import annotations

import json
from typing import Any

from autodeployer.model import Result
from autodeployer.targets.sesam import Spec
from autodeployer.targets.sesam_apply import EACH_MAX
from autodeployer.targets.sesam_entities import UploadBody
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import BASE_METADATA, entity_json, pipe, system
from .test_sesam_verify import first_sync, sync


def writes(sesam: SesamEmulator) -> list[str]:
    """The config writes the node received since the last reset_log, in order (secrets and env aside)."""
    return [f"{r.method} {r.path}" for r in sesam.requests
            if r.method in ("POST", "PUT", "DELETE") and "/secrets" not in r.path and r.path != "/api/env"]


def audits(sesam: SesamEmulator) -> dict[str, Any]:
    """Each entity's ``$audit`` (the node bumps it when it stores the entity anew)."""
    return {e["_id"]: sesam.audit(e["_id"]) for e in sesam.entities()}


def test_one_changed_pipe_is_one_put_of_that_pipe(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    first_sync(app_env, sesam)
    before, puts = audits(sesam), sesam.put_count
    config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="changed"))})
    result = sync(app_env)
    assert result.result is Result.SYNCED, result.error
    assert writes(sesam) == ["PUT /api/pipes/orders/config"]
    assert sesam.put_count == puts + 1
    after = audits(sesam)
    assert after["orders"] != before["orders"]  # stored anew, with its $audit bumped
    assert {k: v for k, v in after.items() if k != "orders"} == {k: v for k, v in before.items() if k != "orders"}
    stored = {e["_id"]: e for e in sesam.entities()}
    assert stored["orders"]["source"]["dataset"] == "changed"
    assert result.details["apply_mode"] == "per-entity"
    assert result.details["apply_writes"] == ["PUT pipe orders"]


def test_a_small_apply_reads_only_the_changed_files_again(app_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                          monkeypatch):
    """The replace-all body is never built for a per-entity apply: at 50,000 entities building it means
    parsing every file again (~0.7 s), for a plan that writes one pipe."""
    first_sync(app_env, sesam)
    built: list[int] = []
    original = UploadBody.materialise

    def counted(self: UploadBody) -> list[dict[str, Any]]:
        built.append(1)
        return original(self)
    monkeypatch.setattr(UploadBody, "materialise", counted)
    config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="again"))})
    result = sync(app_env)
    assert result.result is Result.SYNCED and result.details["apply_mode"] == "per-entity", result.error
    assert built == []
    small = {**app_env, "SESAM_APPLY_EACH_MAX": "0"}  # the replace-all does build it
    config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="whole"))})
    assert sync(small).details["apply_mode"] == "replace-all" and built


def test_adds_changes_and_removals_each_take_their_endpoint_in_order(app_env, config_repo: WorkRepo,
                                                                     sesam: SesamEmulator):
    """Systems before pipes; pipe removals before system removals; an id with ":" is sent as %3A."""
    first_sync(app_env, sesam)
    config_repo.commit_and_push({
        "pipes/erp:orders.conf.json": entity_json(pipe("erp:orders", dataset="erp")),
        "pipes/customers.conf.json": None,
        "systems/crm.conf.json": None,
        "systems/billing.conf.json": entity_json(system("billing")),
        "systems/erp.conf.json": entity_json(system("erp", url="http://erp2.example.org/%s")),
    })
    result = sync(app_env)
    assert result.result is Result.SYNCED, result.error
    assert writes(sesam) == ["POST /api/systems", "PUT /api/systems/erp/config", "POST /api/pipes",
                             "DELETE /api/pipes/customers", "DELETE /api/systems/crm"]
    assert any(r.path == "/api/pipes" and r.method == "POST" for r in sesam.requests)
    stored = {e["_id"]: e for e in sesam.entities()}
    assert "erp:orders" in stored and "billing" in stored and "customers" not in stored and "crm" not in stored
    assert stored["erp"]["url_pattern"] == "http://erp2.example.org/%s"
    assert stored["node"] == {**BASE_METADATA, **{k: v for k, v in stored["node"].items() if k.startswith("$")}}


def test_the_threshold_the_metadata_and_zero_take_the_replace_all(app_env, config_repo: WorkRepo,
                                                                  sesam: SesamEmulator):
    assert Spec.model_fields["apply_each_max"].default == EACH_MAX == 16
    first_sync(app_env, sesam)
    small = {**app_env, "SESAM_APPLY_EACH_MAX": "2"}
    config_repo.commit_and_push({f"pipes/p{i}.conf.json": entity_json(pipe(f"p{i}")) for i in range(3)})
    result = sync(small)
    assert result.result is Result.SYNCED, result.error
    assert writes(sesam) == ["PUT /api/config"] and result.details["apply_mode"] == "replace-all"

    sesam.reset_log()
    config_repo.commit_and_push({f"pipes/p{i}.conf.json": None for i in range(2)})
    assert sync(small).result is Result.SYNCED
    assert writes(sesam) == ["DELETE /api/pipes/p0", "DELETE /api/pipes/p1"]

    sesam.reset_log()
    config_repo.commit_and_push({"node-metadata.conf.json": entity_json({**BASE_METADATA, "x": 1})})
    assert sync(app_env).result is Result.SYNCED
    assert writes(sesam) == ["PUT /api/config"]

    sesam.reset_log()
    config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="zero"))})
    assert sync({**app_env, "SESAM_APPLY_EACH_MAX": "0"}).result is Result.SYNCED
    assert writes(sesam) == ["PUT /api/config"]


def test_a_node_not_as_planned_falls_back_to_the_replace_all(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    """A pipe that became a system is a change of one _id: PUT /api/systems/<id>/config answers 404 (the
    node holds a pipe of that id), so the whole configuration is uploaded instead, and the sync is sound."""
    first_sync(app_env, sesam)
    config_repo.commit_and_push({"pipes/customers.conf.json": None,
                                 "systems/customers.conf.json": entity_json(system("customers"))})
    result = sync(app_env)
    assert result.result is Result.SYNCED, result.error
    assert writes(sesam) == ["PUT /api/systems/customers/config", "PUT /api/config"]
    assert result.details["apply_mode"] == "replace-all"
    assert "PUT system customers: 404" in result.details["apply_fallback"]
    assert {e["_id"]: e for e in sesam.entities()}["customers"]["type"] == "system:url"


def test_a_refused_entity_stops_the_apply_and_names_what_was_written(app_env, config_repo: WorkRepo,
                                                                     sesam: SesamEmulator):
    """The node refuses a microservice without docker.port (400): the system before it was written, the
    pipe after it was not; the error says both, the service records the failure, the next sync retries."""
    first_sync(app_env, sesam)
    bad = {"_id": "zz-ms", "type": "system:microservice", "docker": {"image": "busybox:1"}}
    config_repo.commit_and_push({
        "systems/crm.conf.json": entity_json(system("crm", url="http://crm2.example.org/%s")),
        "systems/zz-ms.conf.json": entity_json(bad),
        "pipes/orders.conf.json": entity_json(pipe("orders", dataset="after")),
    })
    result = sync(app_env)
    assert result.result is Result.FAILED, result.summary
    error = result.error or ""
    assert "the node rejected the configuration at system zz-ms" in error, error
    assert "written before it: PUT system crm" in error, error
    assert any("docker.port" in str(p) for p in result.problems), result.problems
    assert writes(sesam) == ["PUT /api/systems/crm/config", "POST /api/systems"]
    stored = {e["_id"]: e for e in sesam.entities()}
    assert stored["crm"]["url_pattern"] == "http://crm2.example.org/%s"  # written before the refusal
    assert "zz-ms" not in stored and stored["orders"]["source"]["dataset"] != "after"  # not written
    # Fixed in Git: the next sync plans against what is live and writes only what is still missing.
    good = {**bad, "docker": {"image": "busybox:1", "port": 5000}}
    config_repo.commit_and_push({"systems/zz-ms.conf.json": entity_json(good)})
    sesam.reset_log()
    assert sync(app_env).result is Result.SYNCED
    assert writes(sesam) == ["POST /api/systems", "PUT /api/pipes/orders/config"]
    posted = [r for r in sesam.requests if r.method == "POST"]
    assert len(posted) == 1


def test_secrets_never_reach_the_per_entity_writes_in_the_url(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    """The JWT travels in the Authorization header only, as with the replace-all."""
    first_sync(app_env, sesam)
    config_repo.commit_and_push({"pipes/orders.conf.json": entity_json(pipe("orders", dataset="jwt"))})
    assert sync(app_env).result is Result.SYNCED
    jwt = app_env["JWT"]
    assert writes(sesam) == ["PUT /api/pipes/orders/config"]
    assert all(jwt not in f"{r.path}?{r.query}" for r in sesam.requests)
    assert jwt not in json.dumps([r.__dict__ for r in sesam.requests], default=str)

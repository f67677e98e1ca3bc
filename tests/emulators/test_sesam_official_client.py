"""The Sesam emulator driven by sesamclient 1.2.6, Sesam's own Python client.

The calls are those the product and its tests make (config up- and download, env, secrets,
metadata, pipes and pumps), plus the error cases (bad token, 404, 409, 400 validation) and the
pump and runtime fields a safe rollout reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sesamclient
from sesamclient.exceptions import (
    BadRequestException,
    ConfigUploadFailed,
    ForbiddenException,
    PipeAlreadyExists,
    PumpDoesNotSupportTheOperation,
)

from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import SESAM_JWT, pipe, system

ORDERS = pipe("orders", dataset="crm-orders")
CRM = pipe("crm-orders", dataset="crm")
SYSTEM = system("crm")
#: How the official CLI and the reference (section 8) tell user pipes from the node's own.
NODE_ORIGINS = {"system", "search", "replica", "aggregator-storage-node"}


@pytest.fixture
def node() -> Iterator[tuple[SesamEmulator, str]]:
    emulator = SesamEmulator(jwt=SESAM_JWT)
    with emulator.serve() as server:
        yield emulator, server.url + "/api"


def connect(url: str, token: str = SESAM_JWT) -> sesamclient.Connection:
    return sesamclient.Connection(sesamapi_base_url=url, jwt_auth_token=token, timeout=10)


def upload(conn: sesamclient.Connection, entities: list[dict[str, Any]], **kw: Any) -> Any:
    return conn.upload_config(json.dumps(entities).encode(), **kw)


def is_user_pipe(p: Any) -> bool:
    origin = p.runtime.get("origin")
    return origin not in NODE_ORIGINS and ":singlenode" not in p.id


def test_config_round_trip_env_secrets_metadata(node: tuple[SesamEmulator, str]) -> None:
    emulator, url = node
    conn = connect(url)
    assert upload(conn, [ORDERS, CRM, SYSTEM])["validation_errors"] == []
    assert {e["_id"] for e in conn.get_config()} == {"orders", "crm-orders", "crm", "node"}
    conn.put_env_vars({"host": "h"})
    assert conn.get_env_vars() == {"host": "h"}
    conn.put_secrets({"pw": "s3cret"})
    assert conn.get_secrets() == ["pw"] and emulator.secret_values() == {"pw": "s3cret"}
    assert conn.get_metadata()["_id"] == "node"
    assert conn.get_system("crm").id == "crm"


def test_error_cases(node: tuple[SesamEmulator, str]) -> None:
    _, url = node
    with pytest.raises(ForbiddenException):
        connect(url, "not-the-token").get_config()
    conn = connect(url)
    assert conn.get_pipe("absent") is None  # 404 is an ordinary answer on GET
    conn.add_pipes([ORDERS])
    with pytest.raises(PipeAlreadyExists):
        conn.add_pipes([ORDERS])
    with pytest.raises(ConfigUploadFailed) as refused:
        upload(conn, [{"_id": "bad", "type": "pipe", "x": "$SECRET(pw)"}])
    [item] = refused.value.response.json()["validation_errors"]
    assert item["config-errors"][0]["elements"] == "$['x']"


def test_pump_and_wait_for_pipe_to_be_deployed(node: tuple[SesamEmulator, str]) -> None:
    emulator, url = node
    conn = connect(url)
    emulator.keep_deploying(0.5)
    upload(conn, [ORDERS, CRM])
    orders = conn.get_pipe("orders")
    assert orders.runtime["state"] == "Deploying"
    orders.wait_for_pipe_to_be_deployed(timeout=10)  # needs GET .../pump (was 405)
    pump = orders.get_pump()
    assert pump.id == "pump:orders"
    assert pump.last_run is not None and pump.next_run > pump.last_run
    assert pump.runtime["success"] is True and pump.is_valid_config
    assert pump.has_pending_work() is False
    pump.disable()
    assert pump.is_disabled and conn.get_pipe("orders").runtime["is-disabled"] is True
    pump.enable()
    assert pump.start() is True  # POST answers with the pump object
    pump.wait_for_pump_to_finish_running(timeout=5, assert_successful_run=True)
    pump.update_last_seen("42")
    assert pump.last_seen == "42"
    with pytest.raises(PumpDoesNotSupportTheOperation):
        pump.run_operation("explode")
    runtime = conn.get_pipe("orders").runtime
    for key in ("last-run", "next-run", "last-seen", "queues", "success", "last-message",
                "is-running", "is-disabled", "is-valid-config", "config-errors", "state"):
        assert key in runtime, key
    assert runtime["queues"]["source"] == {"crm-orders": 0}
    graph = conn.get_pipe("orders").graph
    assert graph["upstream-pipes"] == ["crm-orders"] and graph["sink-dataset"] == "orders"


def test_runs_fail_by_switch_and_by_config(node: tuple[SesamEmulator, str]) -> None:
    emulator, url = node
    conn = connect(url)
    broken = {**ORDERS, "metadata": {"emulator-fail-runs": "source system answered 500"}}
    upload(conn, [broken, CRM])
    pump = conn.get_pipe("orders").get_pump()
    assert pump.runtime["success"] is False
    assert pump.last_original_error_message == "source system answered 500"
    with pytest.raises(AssertionError, match="failed"):
        pump.wait_for_pump_to_finish_running(timeout=5, assert_successful_run=True)
    emulator.fail_runs("crm-orders", "disk full")
    assert conn.get_pipe("crm-orders").runtime["success"] is False
    emulator.fail_runs("crm-orders", None)
    crm_pump = conn.get_pipe("crm-orders").get_pump()
    crm_pump.start()
    assert crm_pump.runtime["success"] is True


def test_node_pipes_exist_and_need_filtering(node: tuple[SesamEmulator, str]) -> None:
    _, url = node
    conn = connect(url)
    upload(conn, [ORDERS])
    listed = conn.get_pipes()
    assert [p.id for p in listed if is_user_pipe(p)] == ["orders"]
    others = {p.id: p.runtime for p in listed if not is_user_pipe(p)}
    assert others["replica-node:singlenode"]["state"] == "Deploying"  # forever
    assert others["search-index-node"]["success"] is False
    internal = conn.get_pipes(include_internal_pipes=True)
    assert "system:config:node" in [p.id for p in internal]
    assert "search-index-node" not in {e["_id"] for e in conn.get_config()}
    node_pipe = conn.get_pipe("search-index-node")
    with pytest.raises(BadRequestException) as refused:  # 403: the node's, not the user's
        node_pipe.modify({"_id": "search-index-node", "type": "pipe"})
    assert refused.value.response.status_code == 403
    with pytest.raises(BadRequestException):
        node_pipe.delete()
    assert conn.get_pipe("search-index-node") is not None


def test_config_all_and_config_history(node: tuple[SesamEmulator, str]) -> None:
    _, url = node
    conn = connect(url)
    upload(conn, [ORDERS, CRM])
    upload(conn, [{**ORDERS, "description": "v2"}, CRM])
    upload(conn, [CRM])
    history = conn.get_config_history("orders")
    assert [h["_deleted"] for h in history] == [False, False, True]
    assert history[1]["config"]["description"] == "v2"
    newest = conn.get_config_history("orders", reverse=True, limit=1)
    assert newest[0]["_deleted"] is True
    assert conn.get_config_history("orders", since=history[0]["_updated"])[0] == history[1]
    grouped = {**ORDERS, "metadata": {"$config-group": "analytics"}}
    result = upload(conn, [CRM, grouped], upload_all_config_groups=True)
    assert result["validation_errors"] == []
    assert {e["_id"] for e in conn.get_config_all()} == {"crm-orders", "orders", "node"}
    assert {e["_id"] for e in conn.get_config()} == {"crm-orders", "node"}
    assert [e["_id"] for e in conn.get_config(config_group="analytics")] == ["orders"]


@pytest.mark.parametrize("refuse", [True, False])
def test_unknown_env_is_a_switch(node: tuple[SesamEmulator, str], refuse: bool) -> None:
    emulator, url = node
    emulator.refuse_unknown_env = refuse
    conn = connect(url)
    entity = {**ORDERS, "url": "$ENV(missing)"}
    if refuse:
        with pytest.raises(ConfigUploadFailed):
            upload(conn, [entity])
        assert conn.get_pipe("orders") is None
    else:
        [item] = upload(conn, [entity])["validation_errors"]
        assert item["config-errors"][0]["level"] == "warning"
        assert conn.get_pipe("orders").config["original"]["url"] == "$ENV(missing)"

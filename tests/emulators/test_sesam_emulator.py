"""The Sesam emulator, exercised over real HTTP on loopback (reference: sesam-api.md)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autodeployer_emulators.sesam import (
    CheckContext,
    Posted,
    SesamEmulator,
    expand_env,
    make_plan,
)

JWT = "secret-jwt"
AUTH = {"Authorization": f"Bearer {JWT}"}

PIPE_A = {"_id": "a", "type": "pipe", "source": {"type": "embedded", "entities": []}}
PIPE_B = {"_id": "b", "type": "pipe"}
SYSTEM_S = {"_id": "s", "type": "system:url", "url_pattern": "http://x/%s"}
METADATA = {"_id": "node", "type": "metadata", "namespaced_identifiers": False}
MICROSERVICE = {
    "_id": "ms",
    "type": "system:microservice",
    "docker": {"image": "busybox:1", "port": 5000},
}


def make_jwt(**claims: Any) -> str:
    """An unsigned JWT-shaped token carrying the given claims."""

    def b64(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.c2lnbmF0dXJl"


def make_zip(files: dict[str, Any], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in files.items():
            data = content if isinstance(content, bytes) else json.dumps(content).encode()
            archive.writestr(name, data)
    return buffer.getvalue()


def without_audit(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "$audit"} for e in entities]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[SesamEmulator, str]]:
    """One server for the module; each test gets the emulator reset to a fresh node."""
    emulator = SesamEmulator(jwt=JWT)
    with emulator.serve() as server:
        yield emulator, server.url + "/api"


@pytest.fixture
def emu(served: tuple[SesamEmulator, str]) -> SesamEmulator:
    emulator = served[0]
    emulator.reset()
    return emulator


@pytest.fixture
def base(emu: SesamEmulator, served: tuple[SesamEmulator, str]) -> str:
    return served[1]


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as http:
        yield http


def assert_item_shape(item: dict[str, Any]) -> None:
    assert set(item) <= {"posted-config", "config-errors", "is-valid-config", "json-schema"}
    assert isinstance(item["is-valid-config"], bool)
    for error in item["config-errors"]:
        assert set(error) == {"elements", "level", "msg"}
        assert error["elements"].startswith("$")
        assert error["level"] in ("error", "warning")
        assert isinstance(error["msg"], str) and error["msg"]


# ---- auth -------------------------------------------------------------------------------------


def test_missing_header_is_403_with_json_body(base: str) -> None:
    response = httpx.get(base + "/config")
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json()["status"] == 403


def test_wrong_token_is_403(base: str) -> None:
    response = httpx.get(base + "/config", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 403
    assert response.json()["detail"] == "invalid token"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(base: str, scheme: str) -> None:
    response = httpx.get(base + "/config", headers={"Authorization": f"{scheme} {JWT}"})
    assert response.status_code == 200


def test_other_scheme_is_refused(base: str) -> None:
    response = httpx.get(base + "/config", headers={"Authorization": f"Token {JWT}"})
    assert response.status_code == 403


def test_expire_token_turns_200_into_403(emu: SesamEmulator, client: httpx.Client) -> None:
    assert client.get("/config").status_code == 200
    emu.expire_token()
    response = client.get("/config")
    assert response.status_code == 403
    assert response.json()["detail"] == "token expired"
    emu.set_token("fresh")
    assert client.get("/config", headers={"Authorization": "Bearer fresh"}).status_code == 200


def test_jwt_exp_claim_is_honoured(emu: SesamEmulator, base: str) -> None:
    expired = make_jwt(exp=int(time.time()) - 10)
    valid = make_jwt(exp=int(time.time()) + 3600)
    for token, status in ((expired, 403), (valid, 200)):
        emu.set_token(token)
        response = httpx.get(base + "/config", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == status


def test_auth_disabled_when_jwt_is_none(emu: SesamEmulator, base: str) -> None:
    emu.set_token(None)
    assert httpx.get(base + "/config").status_code == 200
    assert httpx.get(base + "/config", headers={"Authorization": "Bearer any"}).status_code == 200


def test_health_needs_no_token_and_reports_unhealthy(emu: SesamEmulator, base: str) -> None:
    response = httpx.get(base + "/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert isinstance(response.json()["node_uptime"], float)
    emu.healthy = False
    assert httpx.get(base + "/health").status_code == 503


def test_admin_switch_guards_env_and_secrets(emu: SesamEmulator, base: str) -> None:
    developer = make_jwt(principals={"sub-1": ["group:Developer"]})
    admin = make_jwt(principals={"sub-1": ["group:Admin"]})
    emu.set_token(developer)
    emu.require_admin = True
    headers = {"Authorization": f"Bearer {developer}"}
    assert httpx.get(base + "/config", headers=headers).status_code == 200
    assert httpx.get(base + "/env", headers=headers).status_code == 403
    assert httpx.get(base + "/secrets", headers=headers).status_code == 403
    assert httpx.get(base + "/systems/s/secrets", headers=headers).status_code == 403
    emu.set_token(admin)
    headers = {"Authorization": f"Bearer {admin}"}
    assert httpx.get(base + "/env", headers=headers).status_code == 200


# ---- status endpoints ---------------------------------------------------------------------------


def test_ping_root_and_status(emu: SesamEmulator, client: httpx.Client) -> None:
    assert client.get("/ping").json() == {"status": "running"}
    assert client.get("/").json()["status"]["developer_mode"] is True
    emu.developer_mode = False
    assert client.get("/").json()["status"]["developer_mode"] is False
    assert "node_start_time" in client.get("/status").json()


# ---- GET /api/config ----------------------------------------------------------------------------


def test_get_config_json_is_pretty_sorted_and_has_metadata(
    emu: SesamEmulator, client: httpx.Client
) -> None:
    emu.load([PIPE_B, SYSTEM_S, PIPE_A])
    response = client.get("/config", headers={"Accept": "application/json"})
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert response.text == json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    assert [e["_id"] for e in body] == ["a", "b", "node", "s"]
    assert {"_id": "node", "type": "metadata"} in without_audit(body)
    assert all(e["$audit"]["created_ts"].startswith("~t") for e in body)


@pytest.mark.parametrize("accept", [None, "*/*"])
def test_get_config_defaults_to_json(client: httpx.Client, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    client.headers.pop("Accept", None)
    response = client.get("/config", headers=headers)
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json(), list)


def test_get_config_zip_layout(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.load([PIPE_A, SYSTEM_S, METADATA])
    response = client.get("/config", headers={"Accept": "application/zip"})
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.namelist() == ["pipes/a.conf.json", "node-metadata.conf.json",
                                  "systems/s.conf.json"]
    metadata = json.loads(archive.read("node-metadata.conf.json"))
    assert metadata["namespaced_identifiers"] is False
    assert "$audit" in metadata
    assert archive.read("pipes/a.conf.json").endswith(b"}\n")


def test_export_switches_audit_ts_and_hash(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.load([PIPE_A])
    emu.audit_in_export = False
    assert without_audit(client.get("/config").json()) == client.get("/config").json()
    emu.add_ts_and_hash = True
    exported = {e["_id"]: e for e in client.get("/config").json()}
    assert isinstance(exported["a"]["_ts"], int)
    assert len(exported["a"]["_hash"]) == 32


def test_unknown_file_is_exported_under_unknown(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.add_unknown_file("pipes/data.csv", b"a,b\n")
    client.put("/config", json=[PIPE_A])  # pinned node-side content survives uploads
    archive = zipfile.ZipFile(io.BytesIO(
        client.get("/config", headers={"Accept": "application/zip"}).content))
    assert archive.read("unknown/pipes/data.csv") == b"a,b\n"
    assert [e["_id"] for e in client.get("/config").json()] == ["a", "node"]


# ---- PUT /api/config body forms ---------------------------------------------------------------


def test_put_json_array_replaces_config(emu: SesamEmulator, client: httpx.Client) -> None:
    response = client.put("/config", json=[PIPE_A, SYSTEM_S])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"validation_errors": []}
    assert emu.entities() == [PIPE_A, {"_id": "node", "type": "metadata"}, SYSTEM_S]


def test_put_single_object_deletes_everything_else(emu: SesamEmulator,
                                                   client: httpx.Client) -> None:
    emu.load([PIPE_A, PIPE_B, SYSTEM_S])
    assert client.put("/config", json=PIPE_B).status_code == 200
    assert [e["_id"] for e in emu.entities()] == ["b", "node"]


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_put_raw_zip_classifies_by_type(emu: SesamEmulator, client: httpx.Client,
                                        compression: int) -> None:
    body = make_zip({
        "node-metadata.conf.json": METADATA,
        "pipes/sub/a.conf.json": PIPE_A,
        "pipes/misplaced.conf.json": SYSTEM_S,
    }, compression)
    response = client.put("/config", content=body, headers={"Content-Type": "application/zip"})
    assert response.status_code == 200, response.text
    assert emu.entities() == [PIPE_A, METADATA, SYSTEM_S]
    assert client.get("/systems/s").status_code == 200


@pytest.mark.parametrize("kind", ["json", "zip"])
def test_put_multipart_file_part(emu: SesamEmulator, client: httpx.Client, kind: str) -> None:
    if kind == "json":
        part = ("config", json.dumps([PIPE_A]).encode(), "application/json")
    else:
        part = ("config", make_zip({"pipes/a.conf.json": PIPE_A}), "application/zip")
    response = client.put("/config", files={"file": part})
    assert response.status_code == 200, response.text
    assert emu.entities()[0] == PIPE_A


def test_put_multipart_without_file_part_is_400(emu: SesamEmulator,
                                                client: httpx.Client) -> None:
    response = client.put("/config", files={"other": ("config", b"[]", "application/json")})
    assert response.status_code == 400
    assert "file" in response.json()["validation_errors"][0]["config-errors"][0]["msg"]


def test_put_accepts_utf8_bom_and_strips_node_keys(emu: SesamEmulator,
                                                   client: httpx.Client) -> None:
    posted = {**PIPE_A, "$audit": {"created_ts": "~t2000-01-01T00:00:00Z"}, "_ts": 1}
    body = b"\xef\xbb\xbf" + json.dumps([posted]).encode()
    response = client.put("/config", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert emu.entities()[0] == PIPE_A
    audit = emu.audit("a")
    assert audit is not None and audit["created_ts"] != "~t2000-01-01T00:00:00Z"


@pytest.mark.parametrize("raw,expected", [("true", True), ("True", True), ("TRUE", True),
                                          ("false", False), ("False", False)])
def test_force_is_parsed_case_insensitively(emu: SesamEmulator, client: httpx.Client,
                                            raw: str, expected: bool) -> None:
    response = client.put("/config", params={"force": raw}, json=[{"_id": "x", "type": "bad"}])
    assert response.status_code == (200 if expected else 400)


def test_force_with_garbage_value_is_400(emu: SesamEmulator, client: httpx.Client) -> None:
    response = client.put("/config", params={"force": "yes"}, json=[PIPE_A])
    assert response.status_code == 400
    assert [e["_id"] for e in emu.entities()] == ["node"]


@pytest.mark.parametrize("body,content_type", [
    (b"{not json", "application/json"),
    (b"PK\x03\x04 broken", "application/zip"),
    (b'"a string"', "application/json"),
])
def test_unparsable_body_is_400_without_posted_config(
    emu: SesamEmulator, client: httpx.Client, body: bytes, content_type: str
) -> None:
    emu.load([PIPE_A])
    for force in ("false", "true"):
        response = client.put("/config", params={"force": force}, content=body,
                              headers={"Content-Type": content_type})
        assert response.status_code == 400
        [item] = response.json()["validation_errors"]
        assert_item_shape(item)
        assert "posted-config" not in item
        assert item["is-valid-config"] is False
    assert emu.entities()[0] == PIPE_A


def test_empty_array_with_force_wipes_pipes_and_systems(emu: SesamEmulator,
                                                        client: httpx.Client) -> None:
    emu.load([PIPE_A, SYSTEM_S, METADATA])
    assert client.put("/config", params={"force": "true"}, json=[]).status_code == 200
    assert emu.entities() == [{"_id": "node", "type": "metadata"}]


# ---- validation rules -----------------------------------------------------------------------

RULE_CASES: list[tuple[str, list[Any], int, str]] = [
    # (name, upload, index of the offending item, expected elements)
    ("1-not-object", [PIPE_A, 42], 1, "$"),
    ("2-missing-id", [{"type": "pipe"}], 0, "$['_id']"),
    ("2-empty-id", [{"_id": "", "type": "pipe"}], 0, "$['_id']"),
    ("2-non-string-id", [{"_id": 7, "type": "pipe"}], 0, "$['_id']"),
    ("3-missing-type", [{"_id": "x"}], 0, "$['type']"),
    ("3-bad-type", [{"_id": "x", "type": "pipes"}], 0, "$['type']"),
    ("3-bare-system", [{"_id": "x", "type": "system:"}], 0, "$['type']"),
    ("4-duplicate", [PIPE_A, PIPE_B, {**PIPE_A, "x": 1}], 2, "$['_id']"),
    ("5-secret-in-pipe", [{"_id": "p", "type": "pipe", "sink": {"pw": "$SECRET(pw)"}}], 0,
     "$['sink']['pw']"),
    ("5-secret-in-metadata", [{"_id": "node", "type": "metadata", "x": ["$SECRET(pw)"]}], 0,
     "$['x'][0]"),
    ("6-microservice-id-short", [{**MICROSERVICE, "_id": "m"}], 0, "$['_id']"),
    ("6-microservice-id-chars", [{**MICROSERVICE, "_id": "-bad.id"}], 0, "$['_id']"),
    ("7-microservice-no-image", [{**MICROSERVICE, "docker": {"port": 1}}], 0,
     "$['docker']['image']"),
    ("7-microservice-no-port", [{**MICROSERVICE, "docker": {"image": "x"}}], 0,
     "$['docker']['port']"),
    ("7-microservice-no-docker", [{"_id": "ms", "type": "system:microservice"}], 0,
     "$['docker']"),
    ("8-two-metadata", [METADATA, {"_id": "node2", "type": "metadata"}], 1, "$"),
    ("9-system-prefix", [{"_id": "system:x", "type": "pipe"}], 0, "$['_id']"),
    ("10-slash-in-id", [{"_id": "a/b", "type": "pipe"}], 0, "$['_id']"),
    ("env-unknown", [{"_id": "p", "type": "pipe", "url": "http://$ENV(host)/x"}], 0, "$['url']"),
]


@pytest.mark.parametrize("name,upload,index,elements", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_rule_violation_is_400_with_shape_and_no_change(
    emu: SesamEmulator, client: httpx.Client, name: str, upload: list[Any], index: int,
    elements: str,
) -> None:
    emu.load([PIPE_B, METADATA])
    before = emu.entities()
    response = client.put("/config", json=upload)
    assert response.status_code == 400, response.text
    items = response.json()["validation_errors"]
    for item in items:
        assert_item_shape(item)
    offending = [i for i in items if i.get("posted-config") == upload[index]]
    assert offending, items
    errors = [e for e in offending[-1]["config-errors"] if e["level"] == "error"]
    assert elements in [e["elements"] for e in errors]
    assert offending[-1]["is-valid-config"] is False
    assert emu.entities() == before
    assert emu.put_count == 1


def test_duplicate_reported_on_later_occurrences_only(client: httpx.Client) -> None:
    first, second, third = PIPE_A, {**PIPE_A, "n": 2}, {**PIPE_A, "n": 3}
    items = client.put("/config", json=[first, second, third]).json()["validation_errors"]
    assert [i["posted-config"] for i in items] == [second, third]


def test_microservice_upper_case_id_is_a_warning(emu: SesamEmulator,
                                                 client: httpx.Client) -> None:
    response = client.put("/config", json=[{**MICROSERVICE, "_id": "MyService"}])
    assert response.status_code == 200
    [item] = response.json()["validation_errors"]
    assert item["config-errors"][0]["level"] == "warning"
    assert item["is-valid-config"] is True
    assert emu.entities()[0]["_id"] == "MyService"


def test_valid_microservice_and_secret_in_system(emu: SesamEmulator,
                                                 client: httpx.Client) -> None:
    emu_secret = {**SYSTEM_S, "password": "$SECRET(pw)"}
    assert client.put("/secrets", json={"pw": "hunter2"}).status_code == 200
    response = client.put("/config", json=[MICROSERVICE, emu_secret])
    assert response.status_code == 200
    assert response.json() == {"validation_errors": []}


def test_unknown_secret_in_system_is_a_warning(client: httpx.Client) -> None:
    response = client.put("/config", json=[{**SYSTEM_S, "password": "$SECRET(nope)"}])
    assert response.status_code == 200
    [item] = response.json()["validation_errors"]
    assert item["config-errors"] == [
        {"elements": "$['password']", "level": "warning", "msg": "unknown secret 'nope'"}]


def test_unknown_env_is_warning_under_force(emu: SesamEmulator, client: httpx.Client) -> None:
    pipe = {"_id": "p", "type": "pipe", "url": "$ENV(host)"}
    response = client.put("/config", params={"force": "true"}, json=[pipe])
    assert response.status_code == 200
    [item] = response.json()["validation_errors"]
    assert item["config-errors"][0]["level"] == "warning"
    assert item["is-valid-config"] is True
    client.put("/env", json={"host": "example.org"})
    assert client.put("/config", json=[pipe]).json() == {"validation_errors": []}


def test_non_json_zip_entry_is_error_or_kept_by_switch(emu: SesamEmulator,
                                                       client: httpx.Client) -> None:
    body = make_zip({"pipes/a.conf.json": PIPE_A, "pipes/data.csv": b"a,b\n"})
    headers = {"Content-Type": "application/zip"}
    response = client.put("/config", content=body, headers=headers)
    assert response.status_code == 400
    [item] = response.json()["validation_errors"]
    assert "posted-config" not in item
    assert "pipes/data.csv" in item["config-errors"][0]["msg"]
    emu.keep_unknown_files = True
    assert client.put("/config", content=body, headers=headers).status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(
        client.get("/config", headers={"Accept": "application/zip"}).content))
    assert archive.read("unknown/pipes/data.csv") == b"a,b\n"


def test_force_applies_best_effort_and_lists_errors(emu: SesamEmulator,
                                                    client: httpx.Client) -> None:
    bad_pipe = {"_id": "bad", "type": "pipe", "x": "$SECRET(s)"}
    upload = [PIPE_A, bad_pipe, {"type": "pipe"}, {"_id": "a/b", "type": "pipe"}]
    response = client.put("/config", params={"force": "true"}, json=upload)
    assert response.status_code == 200
    items = response.json()["validation_errors"]
    assert len(items) == 3
    assert all(not i["is-valid-config"] for i in items)
    assert [e["_id"] for e in emu.entities()] == ["a", "bad", "node"]
    runtime = client.get("/pipes/bad").json()["runtime"]
    assert runtime["is-valid-config"] is False
    assert runtime["config-errors"][0]["elements"] == "$['x']"


def test_force_keeps_last_duplicate(emu: SesamEmulator, client: httpx.Client) -> None:
    upload = [PIPE_A, {**PIPE_A, "n": 2}]
    assert client.put("/config", params={"force": "true"}, json=upload).status_code == 200
    assert emu.entities()[0] == {**PIPE_A, "n": 2}


# ---- $audit -----------------------------------------------------------------------------------


def test_audit_created_kept_and_modified_bumped_only_on_change(emu: SesamEmulator,
                                                                base: str) -> None:
    token = make_jwt(email="dev@example.org", user_id="u1", api_token_id="t1")
    emu.set_token(token)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:

        def audit_of(entity_id: str) -> dict[str, Any]:
            audit: dict[str, Any] = {e["_id"]: e for e in client.get("/config").json()}[
                entity_id]["$audit"]
            return audit

        client.put("/config", json=[PIPE_A])
        first = audit_of("a")
        assert first["created_ts"] == first["last_modified_ts"]
        assert first["created_by"] == {"user_id": "u1", "email": "dev@example.org",
                                       "remote_addr": "127.0.0.1", "api_token_id": "t1"}
        reordered = dict(reversed(list(PIPE_A.items())))
        client.put("/config", json=[reordered])
        assert audit_of("a") == first
        client.put("/config", json=[{**PIPE_A, "description": "changed"}])
        changed = audit_of("a")
        assert changed["created_ts"] == first["created_ts"]
        assert changed["last_modified_ts"] > first["last_modified_ts"]
        client.put("/config", json=[])
        client.put("/config", json=[PIPE_A])
        assert audit_of("a")["created_ts"] > changed["last_modified_ts"]


def test_load_records_audit_and_refuses_invalid(emu: SesamEmulator) -> None:
    emu.load([PIPE_A])
    audit = emu.audit("a")
    assert audit is not None and audit["created_by"]["user_id"] == "seed"
    with pytest.raises(ValueError, match="invalid seed"):
        emu.load([{"_id": "x", "type": "nope"}])
    assert emu.entities()[0] == PIPE_A
    emu.load([{"_id": "e", "type": "pipe", "url": "$ENV(later)"}])  # env may come later
    assert [e["_id"] for e in emu.entities()] == ["e", "node"]


def test_in_process_env_and_secret_seeding(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.set_env_values({"host": "h"})
    emu.set_secret_values({"pw": "x"})
    assert client.get("/env").json() == {"host": "h"}
    assert client.get("/secrets").json() == ["pw"]
    system = {**SYSTEM_S, "url_pattern": "$ENV(host)", "password": "$SECRET(pw)"}
    assert client.put("/config", json=[system]).json() == {"validation_errors": []}


# ---- metadata ---------------------------------------------------------------------------------


def test_get_metadata_is_one_object(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.load([METADATA])
    body = client.get("/metadata").json()
    assert body["_id"] == "node"
    assert body["subjectidentifier"] == "http://node"
    assert body["config"]["original"]["namespaced_identifiers"] is False
    assert "$audit" in body["config"]["original"]
    assert body["runtime"] == {"is-valid-config": True, "config-errors": []}


def test_put_config_without_metadata_resets_it(emu: SesamEmulator, client: httpx.Client) -> None:
    client.put("/config", json=[PIPE_A, METADATA])
    assert METADATA in emu.entities()
    client.put("/config", json=[PIPE_A])
    assert {"_id": "node", "type": "metadata"} in emu.entities()
    assert METADATA not in emu.entities()


def test_keep_metadata_switch(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.keep_metadata_on_replace = True
    client.put("/config", json=[PIPE_A, METADATA])
    audit = emu.audit("node")
    client.put("/config", json=[PIPE_B])
    assert emu.entities() == [PIPE_B, METADATA]
    assert emu.audit("node") == audit


def test_put_and_delete_metadata(emu: SesamEmulator, client: httpx.Client) -> None:
    response = client.put("/metadata", json={"namespaced_identifiers": True})
    assert response.status_code == 200
    assert response.json()["config"]["original"]["namespaced_identifiers"] is True
    assert {"_id": "node", "type": "metadata", "namespaced_identifiers": True} in emu.entities()
    assert client.put("/metadata", json={"x": "$SECRET(a)"}).status_code == 400
    assert client.put("/metadata", json={"type": "pipe"}).status_code == 400
    assert client.delete("/metadata").status_code == 200
    assert client.get("/metadata").json()["config"]["original"]["type"] == "metadata"
    assert {"_id": "node", "type": "metadata"} in emu.entities()


def test_named_config_group(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.load([PIPE_A, METADATA])
    assert client.put("/config/extra", json=[PIPE_B]).status_code == 200
    assert [e["_id"] for e in client.get("/config/extra").json()] == ["b"]
    assert [e["_id"] for e in client.get("/config").json()] == ["a", "node"]
    assert METADATA in emu.entities()
    assert client.put("/config/extra", json=[METADATA]).status_code == 400
    clash = client.put("/config/extra", json=[PIPE_A])
    assert clash.status_code == 400
    assert "default" in clash.json()["validation_errors"][0]["config-errors"][0]["msg"]


# ---- env and secrets --------------------------------------------------------------------------


def test_env_replace_merge_delete(emu: SesamEmulator, client: httpx.Client) -> None:
    assert client.put("/env", json={"a": "1", "b": True, "c": 3}).status_code == 200
    assert client.get("/env").json() == {"a": "1", "b": True, "c": 3}
    client.put("/env", json={"x": "y"})
    assert emu.env_values() == {"x": "y"}
    client.post("/env", json={"a": "2"})
    client.patch("/env", json={"x": "z"})
    assert emu.env_values() == {"x": "z", "a": "2"}
    assert client.delete("/env/a").status_code == 200
    assert client.delete("/env/a").status_code == 404
    assert client.put("/env", json=["not", "an", "object"]).status_code == 400
    client.put("/env", json={})
    assert client.get("/env").json() == {}


def test_secrets_are_write_only(emu: SesamEmulator, client: httpx.Client) -> None:
    response = client.put("/secrets", params={"encrypt": "true"}, json={"pw": "hunter2", "k": "v"})
    assert response.status_code == 200
    assert response.json() == ["k", "pw"]
    listing = client.get("/secrets")
    assert listing.json() == ["k", "pw"]
    assert "hunter2" not in listing.text
    client.post("/secrets", json={"new": "n"})
    assert emu.secret_values() == {"pw": "hunter2", "k": "v", "new": "n"}
    client.put("/secrets", json=[{"only": "o"}])
    assert emu.secret_values() == {"only": "o"}
    assert client.delete("/secrets/only").status_code == 200
    assert client.delete("/secrets/only").status_code == 404
    assert client.put("/secrets", json={"bad": None}).status_code == 400
    assert emu.secret_values() == {}


def test_system_scoped_secrets(emu: SesamEmulator, client: httpx.Client) -> None:
    assert client.put("/systems/s/secrets", json={"pw": "x"}).status_code == 404
    emu.load([{**SYSTEM_S, "password": "$SECRET(pw)"}])
    assert client.put("/systems/s/secrets", json={"pw": "x"}).json() == ["pw"]
    assert client.get("/systems/s/secrets").json() == ["pw"]
    assert emu.system_secret_values("s") == {"pw": "x"}
    warning_free = client.put("/config", json=[{**SYSTEM_S, "password": "$SECRET(pw)"}])
    assert warning_free.json() == {"validation_errors": []}
    client.put("/config", json=[])
    assert emu.system_secret_values("s") == {}


def test_effective_config_expands_env(emu: SesamEmulator, client: httpx.Client) -> None:
    client.put("/env", json={"host": "h", "port": 8080, "flag": True})
    pipe = {"_id": "p", "type": "pipe", "url": "http://$ENV(host):$ENV(port)/",
            "port": "$ENV(port)", "flag": "$ENV(flag)"}
    assert client.put("/config", json=[pipe]).status_code == 200
    config = client.get("/pipes/p").json()["config"]
    assert config["original"]["url"] == "http://$ENV(host):$ENV(port)/"
    assert config["effective"]["url"] == "http://h:8080/"
    assert config["effective"]["port"] == 8080
    assert config["effective"]["flag"] is True


# ---- per-entity endpoints ---------------------------------------------------------------------


def test_list_pipes_shape_and_fields(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.load([PIPE_B, PIPE_A, SYSTEM_S])
    pipes = client.get("/pipes").json()
    # The node's own pipes are listed too; the system: one only with include-internal-pipes.
    assert [p["_id"] for p in pipes] == ["a", "b", "replica-node:singlenode", "search-index-node"]
    internal = client.get("/pipes", params={"include-internal-pipes": "true"}).json()
    assert "system:config:node" in [p["_id"] for p in internal]
    assert set(pipes[0]) == {"_id", "config", "runtime", "storage", "graph"}
    runtime = pipes[0]["runtime"]
    assert runtime["state"] == "Idle"
    assert {"is-running", "is-valid-config", "is-disabled", "config-errors",
            "supported-operations"} <= set(runtime)
    narrow = client.get("/pipes", params={"fields": "runtime"}).json()
    assert set(narrow[0]) == {"_id", "runtime"}
    assert [s["_id"] for s in client.get("/systems").json()] == ["s"]


def test_get_and_delete_pipe_with_colon_id(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.load([{"_id": "ns:p", "type": "pipe"}])
    assert client.get("/pipes/ns%3Ap").json()["_id"] == "ns:p"
    deleted = client.delete("/pipes/ns%3Ap")
    assert deleted.status_code == 200
    assert deleted.json()["config"]["original"]["_id"] == "ns:p"
    assert client.get("/pipes/ns%3Ap").status_code == 404
    assert client.delete("/pipes/ns%3Ap").status_code == 404


def test_post_pipes_201_409_400(emu: SesamEmulator, client: httpx.Client) -> None:
    created = client.post("/pipes", json=[PIPE_A, PIPE_B])
    assert created.status_code == 201
    assert [p["_id"] for p in created.json()] == ["a", "b"]
    again = client.post("/pipes", json=[{**PIPE_A, "n": 1}])
    assert again.status_code == 409
    assert emu.entities()[0] == PIPE_A
    invalid = client.post("/pipes", json=[{"_id": "c", "type": "pipe", "x": "$SECRET(a)"}])
    assert invalid.status_code == 400
    assert_item_shape(invalid.json()["validation_errors"][0])
    wrong_kind = client.post("/pipes", json=[{"_id": "c", "type": "system:url"}])
    assert wrong_kind.status_code == 400
    assert [e["_id"] for e in emu.entities()] == ["a", "b", "node"]
    forced = client.post("/pipes", params={"force": "true"},
                         json=[{"_id": "c", "type": "pipe", "x": "$SECRET(a)"}])
    assert forced.status_code == 201
    assert forced.json()[0]["runtime"]["is-valid-config"] is False


def test_put_pipe_config(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.load([PIPE_A])
    created = emu.audit("a")
    response = client.put("/pipes/a/config", json={"type": "pipe", "description": "d"})
    assert response.status_code == 200
    assert response.json()["config"]["original"]["description"] == "d"
    assert emu.entities()[0] == {"_id": "a", "type": "pipe", "description": "d"}
    audit = emu.audit("a")
    assert audit is not None and created is not None
    assert audit["created_ts"] == created["created_ts"]
    assert audit["last_modified_ts"] > created["last_modified_ts"]
    assert client.put("/pipes/a/config", json={"type": "bogus"}).status_code == 400
    assert client.put("/pipes/a/config", json={"_id": "z", "type": "pipe"}).status_code == 400
    assert client.put("/pipes/zz/config", json={"type": "pipe"}).status_code == 404
    assert client.get("/pipes/a/config").json()["description"] == "d"


def test_system_endpoints(emu: SesamEmulator, client: httpx.Client) -> None:
    created = client.post("/systems", json=[MICROSERVICE, SYSTEM_S])
    assert created.status_code == 201
    assert client.get("/systems/ms/status").json()["running"] is True
    assert client.post("/systems/ms/reload").status_code == 202
    assert client.get("/systems/ms/logs").status_code == 200
    updated = client.put("/systems/s/config", json={"type": "system:url", "url_pattern": "y"})
    assert updated.json()["config"]["original"] == {
        **{"_id": "s", "type": "system:url", "url_pattern": "y"},
        "$audit": updated.json()["config"]["original"]["$audit"]}
    client.put("/systems/s/secrets", json={"k": "v"})
    assert client.delete("/systems/s").status_code == 200
    assert emu.system_secret_values("s") == {}
    assert client.get("/systems/s/status").status_code == 404


def test_pump_operations(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.load([PIPE_A])
    response = client.post("/pipes/a/pump", data={"operation": "disable"})
    assert response.json()["runtime"]["is-disabled"] is True
    client.post("/pipes/a/pump", data={"operation": "start"})
    assert emu.pump_operations() == [("a", "disable"), ("a", "start")]
    assert client.post("/pipes/a/pump", data={"operation": "explode"}).status_code == 400
    assert client.post("/pipes/zz/pump", data={"operation": "start"}).status_code == 404


def test_keep_deploying(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.keep_deploying(0.4)
    client.put("/config", json=[PIPE_A])
    assert client.get("/pipes").json()[0]["runtime"]["state"] == "Deploying"
    time.sleep(0.5)
    assert client.get("/pipes").json()[0]["runtime"]["state"] == "Idle"


# ---- test controls -----------------------------------------------------------------------------


def test_fail_next_with_prefix(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.fail_next(503, times=2, path_prefix="/api/config")
    assert client.get("/ping").status_code == 200
    first = client.get("/config")
    assert first.status_code == 503
    assert first.json()["detail"] == "injected failure"
    assert client.put("/config", json=[PIPE_A]).status_code == 503
    assert emu.entities() == [{"_id": "node", "type": "metadata"}]
    assert client.get("/config").status_code == 200
    assert [r.status for r in emu.requests] == [200, 503, 503, 200]


def test_fail_next_applies_before_auth(emu: SesamEmulator, base: str) -> None:
    emu.fail_next(502)
    assert httpx.get(base + "/config").status_code == 502
    assert httpx.get(base + "/config").status_code == 403


def test_set_delay_slows_only_matching_paths(emu: SesamEmulator, client: httpx.Client) -> None:
    emu.set_delay(0.3, path_prefix="/api/config")
    started = time.monotonic()
    client.get("/ping")
    fast = time.monotonic() - started
    started = time.monotonic()
    assert client.get("/config").status_code == 200
    slow = time.monotonic() - started
    assert slow >= 0.3 > fast
    emu.set_delay(0, path_prefix="/api/config")
    started = time.monotonic()
    client.get("/config")
    assert time.monotonic() - started < 0.3


def test_put_count_and_request_log(emu: SesamEmulator, client: httpx.Client, base: str) -> None:
    client.put("/config", json=[PIPE_A])
    client.put("/config", json=[{"_id": "x"}])
    httpx.put(base + "/config", json=[])  # no token: 403, still counted
    client.put("/config", params={"force": "True"}, json=[])
    assert emu.put_count == 4
    assert emu.count("PUT", "/api/config") == 4
    assert [r.status for r in emu.requests] == [200, 400, 403, 200]
    assert emu.requests[-1].query == "force=True"
    emu.reset_log()
    assert emu.requests == []
    assert emu.count("PUT", "/api/config") == 0
    assert emu.put_count == 4


def test_serve_without_context_manager_and_reset() -> None:
    emu = SesamEmulator(jwt=JWT)
    server = emu.serve()
    try:
        assert httpx.put(server.url + "/api/config", headers=AUTH, json=[PIPE_A]).is_success
        emu.expire_token()
        emu.keep_metadata_on_replace = True
        emu.reset()
        assert emu.entities() == [{"_id": "node", "type": "metadata"}]
        assert (emu.put_count, emu.requests, emu.keep_metadata_on_replace) == (0, [], False)
        assert httpx.get(server.url + "/api/ping", headers=AUTH).status_code == 200
    finally:
        server.stop()


def test_command_line_serves_with_token_from_environment() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SESAM_EMULATOR_JWT": "cli-token"}
    process = subprocess.Popen(
        [sys.executable, "-m", "autodeployer_emulators.sesam", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/ping"
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx.get(url, headers={"Authorization": "Bearer cli-token"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.05)
        assert response.json() == {"status": "running"}
        assert httpx.get(url).status_code == 403
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---- properties of the pure parts -------------------------------------------------------------

_CTX = CheckContext(force=False, env_names=frozenset(), secret_names=frozenset(),
                    system_secret_names={})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=8))
def test_plan_reports_each_duplicate_and_keeps_last(ids: list[str]) -> None:
    upload = [Posted({"_id": i, "type": "pipe", "n": n}) for n, i in enumerate(ids)]
    plan = make_plan(upload, _CTX)
    assert len(plan.report) == len(ids) - len(set(ids))
    kept = {item.entity_id: item.entity["n"] for item in plan.accepted if item.entity}
    assert kept == {i: max(n for n, j in enumerate(ids) if j == i) for i in set(ids)}


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True),
                       st.one_of(st.text(max_size=5), st.integers(), st.booleans()),
                       max_size=4))
def test_expand_env_whole_reference_keeps_type(env: dict[str, Any]) -> None:
    doc = {name: [f"$ENV({name})", f"x$ENV({name})"] for name in env}
    expanded = expand_env(doc, env)
    for name, value in env.items():
        assert expanded[name][0] == value
        assert expanded[name][1] == "x" + (value if isinstance(value, str) else json.dumps(value))
    assert expand_env("$ENV(missingname)", env) == "$ENV(missingname)"

"""System-scoped secrets named by secrets/systems/<id>.json, SECRETS_PRUNE, and systems the node re-creates:
through the CLI against the Sesam emulator, values from a SECRETS_FILE."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import entity_json, history_rows, run_cli

ERP_PASSWORD = "erp-SECRET-scoped-11aa22"
CRM_PASSWORD = "crm-SECRET-scoped-33bb44"
CRM_PASSWORD_2 = "crm-SECRET-scoped-rotated-55cc"
DB_PASSWORD = "db-SECRET-global-66dd77"
WRITES = ("PUT", "POST", "DELETE")


def writes(sesam: SesamEmulator) -> list[str]:
    return [f"{r.method} {r.path}" for r in sesam.requests if r.method in WRITES]


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def sync(env: dict[str, str], expect: int = 0) -> str:
    result = run_cli(env, "sync")
    assert result.returncode == expect, output(result)
    return output(result)


def commit(repo: WorkRepo, files: dict[str, str | None], message: str) -> None:
    repo.write(files)
    repo.commit(message)
    repo.push()


def rest(_id: str, kind: str = "system:url", secret: str = "password") -> dict[str, Any]:
    return {"_id": _id, "type": kind, "url_pattern": f"http://{_id}.example.org/%s", "password": f"$SECRET({secret})"}


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"erp-password": ERP_PASSWORD, "crm-password": CRM_PASSWORD,
                                "db-password": DB_PASSWORD}))
    path.chmod(0o600)
    return path


@pytest.fixture
def env(app_env: dict[str, str], secrets_file: Path) -> dict[str, str]:
    return {**app_env, "SECRETS_FILE": str(secrets_file)}


def scoped_repo(config_repo: WorkRepo) -> None:
    commit(config_repo, {
        "systems/erp.conf.json": entity_json(rest("erp")),
        "systems/crm.conf.json": entity_json(rest("crm")),
        "secrets/systems/erp.json": json.dumps({"password": "erp-password"}),
        "secrets/systems/crm.json": json.dumps({"password": "crm-password"}),
    }, "two systems, one secret name, two values")


def test_scoped_secrets_are_deployed_per_system_once(env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                     secrets_file: Path, state_dir: Path):
    scoped_repo(config_repo)
    sesam.reset_log()
    out = sync(env)
    assert sesam.system_secret_values("erp") == {"password": ERP_PASSWORD}
    assert sesam.system_secret_values("crm") == {"password": CRM_PASSWORD}
    assert "password" not in sesam.secret_values()  # not global: each system has its own
    notices = json.loads(history_rows(state_dir)[-1]["details"]).get("notices", [])
    assert not any("secrets/systems" in n for n in notices), notices  # read, not "ignored"
    # New systems: their secrets go after the config upload that creates them.
    assert writes(sesam) == ["PUT /api/config", "POST /api/systems/crm/secrets", "POST /api/systems/erp/secrets"]
    sesam.reset_log()
    out += sync(env)
    assert writes(sesam) == []
    data = json.loads(secrets_file.read_text())
    secrets_file.write_text(json.dumps({**data, "crm-password": CRM_PASSWORD_2}))
    sesam.reset_log()
    out += sync(env)
    assert writes(sesam) == ["POST /api/systems/crm/secrets"]
    assert sesam.system_secret_values("crm") == {"password": CRM_PASSWORD_2}
    history = run_cli(env, "history", "--diff")
    assert "crm/password" in history.stdout and "password: changed" in history.stdout
    for value in (ERP_PASSWORD, CRM_PASSWORD, CRM_PASSWORD_2):
        assert value not in out + output(history)
        for file in state_dir.rglob("*"):
            if file.is_file():
                assert value.encode() not in file.read_bytes(), file


def test_list_form_and_refusals_name_the_file(env, app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    commit(config_repo, {"systems/erp.conf.json": entity_json(rest("erp", secret="erp-password")),
                         "secrets/systems/erp.json": json.dumps(["erp-password"])}, "list form")
    sync(env)
    assert sesam.system_secret_values("erp") == {"erp-password": ERP_PASSWORD}
    before = sesam.entities()
    for files, named in [
        ({"secrets/systems/nowhere.json": "[\"x\"]"}, ["secrets/systems/nowhere.json", "nowhere", "not a system"]),
        ({"secrets/systems/erp.json": "{\"a\": 1}"}, ["secrets/systems/erp.json", "must be strings"]),
        ({"secrets/systems/erp.json": "\"erp-password\""}, ["secrets/systems/erp.json", "JSON list"]),
        ({"secrets/systems/erp.json": "[\"unknown-name\"]"}, ["secrets/systems/erp.json", "unknown-name",
                                                              "in no secret source"]),
    ]:
        commit(config_repo, files, "bad")
        sesam.reset_log()
        out = sync(env, expect=2)
        for word in named:
            assert word in out, (word, out)
        assert writes(sesam) == [] and sesam.entities() == before
        commit(config_repo, dict.fromkeys(files, None), "undo")
        commit(config_repo, {"secrets/systems/erp.json": json.dumps(["erp-password"])}, "back")
    out = sync(app_env, expect=2)  # no secret source at all
    assert "secrets/systems/erp.json" in out and "no secret source" in out


def test_a_type_change_is_reported_as_a_re_creation_and_the_secrets_sent_again(
        env, config_repo: WorkRepo, sesam: SesamEmulator, state_dir: Path):
    scoped_repo(config_repo)
    sync(env)
    commit(config_repo, {"systems/erp.conf.json": entity_json(rest("erp", kind="system:rest"))}, "erp is rest now")
    plan = run_cli(env, "diff")
    assert plan.returncode == 1, output(plan)
    assert "system erp would be re-created by the node (type system:url -> system:rest)" in output(plan)
    assert "its own secrets (password) are deleted with it" in output(plan)
    sesam.reset_log()
    sync(env)
    # The node dropped erp's secrets with the old entity: they are sent again, after the upload.
    assert writes(sesam) == ["PUT /api/config", "POST /api/systems/erp/secrets"]
    assert sesam.system_secret_values("erp") == {"password": ERP_PASSWORD}
    assert json.loads(history_rows(state_dir)[-1]["details"])["recreated_systems"] == {
        "erp": "type system:url -> system:rest"}
    # A removed system loses its secrets too, and the plan says so.
    commit(config_repo, {"systems/crm.conf.json": None, "secrets/systems/crm.json": None}, "crm goes")
    plan = run_cli(env, "diff")
    assert "system crm is removed: its own secrets (password) are deleted with it" in output(plan)


def db(secret: str = "db-password") -> dict[str, Any]:
    return {"_id": "db", "type": "system:postgresql", "password": f"$SECRET({secret})"}


@pytest.mark.parametrize("prune", [True, False])
def test_prune_removes_only_what_this_deployer_sent_and_the_source_dropped(
        env, config_repo: WorkRepo, sesam: SesamEmulator, secrets_file: Path, prune: bool):
    env = {**env, "SECRETS_PRUNE": "true"} if prune else env
    sesam.set_secret_values({"jwt": "hand-jwt-123", "manual": "hand-set-456"})
    commit(config_repo, {"systems/db.conf.json": entity_json(db()),
                         "systems/old.conf.json": entity_json(rest("old", secret="erp-password"))}, "db and old")
    sync(env)
    assert set(sesam.secret_values()) == {"jwt", "manual", "db-password", "erp-password"}
    # old goes; its secret stays in the source: kept. db's secret leaves the source and the config: pruned.
    commit(config_repo, {"systems/old.conf.json": None, "systems/db.conf.json": None}, "both go")
    data = json.loads(secrets_file.read_text())
    del data["db-password"]
    secrets_file.write_text(json.dumps(data))
    sesam.reset_log()
    sync(env)
    if prune:
        assert "DELETE /api/secrets/db-password" in writes(sesam)
        assert set(sesam.secret_values()) == {"jwt", "manual", "erp-password"}
        assert "db-password: removed" in run_cli(env, "history", "--diff").stdout
        sesam.reset_log()
        sync(env)
        assert writes(sesam) == []
    else:
        assert not [w for w in writes(sesam) if w.startswith("DELETE /api/secrets")]
        assert writes(sesam) == ["DELETE /api/systems/db", "DELETE /api/systems/old"]  # sesam_apply
        assert set(sesam.secret_values()) == {"jwt", "manual", "db-password", "erp-password"}


def test_the_emulator_drops_a_systems_secrets_when_its_type_changes(sesam: SesamEmulator, app_env):
    """The emulator's choice for a type change (the reference leaves it open): a new entity, secrets gone."""
    import httpx

    headers = {"Authorization": f"Bearer {app_env['JWT']}"}
    sesam.load([rest("erp")])
    api = sesam.api_url  # type: ignore[attr-defined]
    httpx.post(f"{api}/systems/erp/secrets", json={"password": "x-123"}, headers=headers).raise_for_status()
    sesam.load([{**rest("erp"), "url_pattern": "http://other/%s"}])  # same type: kept
    assert sesam.system_secret_values("erp") == {"password": "x-123"}
    sesam.load([rest("erp", kind="system:rest")])
    assert sesam.system_secret_values("erp") == {}


def test_a_whitelist_skips_the_secrets_of_systems_it_leaves_out(env, config_repo: WorkRepo, sesam: SesamEmulator):
    scoped_repo(config_repo)
    commit(config_repo, {"deployment/whitelist-prod.txt": "systems/erp.conf.json\n"}, "prod deploys erp only")
    sync({**env, "WHITELIST_FILE": "deployment/whitelist-prod.txt"})
    assert "crm" not in {e["_id"] for e in sesam.entities()}
    assert sesam.system_secret_values("erp") == {"password": ERP_PASSWORD}

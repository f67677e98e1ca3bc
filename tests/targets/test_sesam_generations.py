"""The Sesam target as each github-autodeployer generation deployed: variables, secrets, the deployer's own
system and orchestrator-managed entities, end to end through the CLI against the emulators."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator
from autodeployer_emulators.vault import VaultEmulator

from ..helpers import (
    ADMIN_TOKEN,
    BASE_METADATA,
    BASE_PIPES,
    BASE_SYSTEMS,
    entity_json,
    history_rows,
    pipe,
    run_cli,
)

DB_PASSWORD = "dbpass-SECRET-0c1d2e3f4a5b"
DB_PASSWORD_2 = "dbpass-SECRET-second-77aa"
VAULT_ROOT = "vaultroot-SECRET-1a2b3c4d"
WRITES = ("PUT", "POST", "DELETE")


def writes(sesam: SesamEmulator) -> list[str]:
    return [f"{r.method} {r.path}" for r in sesam.requests if r.method in WRITES]


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def sync(env: dict[str, str], expect: int = 0) -> str:
    result = run_cli(env, "sync")
    assert result.returncode == expect, output(result)
    return output(result)


def commit(repo: WorkRepo, message: str) -> None:
    repo.commit(message)
    repo.push()


def db_system(ref: str = "$SECRET(db-password)") -> dict[str, Any]:
    return {"_id": "db", "type": "system:postgresql", "host": "$ENV(db-host)", "password": ref}


def microservice(_id: str, image: str, **environment: str) -> dict[str, Any]:
    return {"_id": _id, "type": "system:microservice",
            "docker": {"image": image, "port": 5000, "environment": environment}}


# --------------------------------------------------------------------------- variables
@pytest.fixture
def var_env(app_env: dict[str, str]) -> dict[str, str]:
    return {**app_env, "VARIABLES_FILE_PATH": "variables/node-env.json"}


def test_variables_are_deployed_on_their_own_and_verified(var_env, config_repo: WorkRepo, sesam: SesamEmulator):
    config_repo.write({
        "variables/node-env.json": "\ufeff" + json.dumps({"erp-host": "erp.example.org", "retries": 3}),
        "pipes/erp-in.conf.json": entity_json(pipe("erp-in", url="http://$ENV(erp-host)/x")),
    })
    commit(config_repo, "erp reads a variable")
    out = sync(var_env)
    assert sesam.env_values() == {"erp-host": "erp.example.org", "retries": 3}
    assert "+ erp-host = \"erp.example.org\"" in run_cli(var_env, "history").stdout or "erp-host" in out
    # Only a variable changes: PUT /api/env, no config upload.
    config_repo.write({"variables/node-env.json": json.dumps({"erp-host": "erp2.example.org", "retries": 3})})
    commit(config_repo, "move erp")
    sesam.reset_log()
    sync(var_env)
    assert writes(sesam) == ["PUT /api/env"]
    assert sesam.env_values()["erp-host"] == "erp2.example.org"
    # Only config changes: no PUT /api/env.
    config_repo.write({"pipes/erp2.conf.json": entity_json(pipe("erp2"))})
    commit(config_repo, "another pipe")
    sesam.reset_log()
    sync(var_env)
    assert writes(sesam) == ["POST /api/pipes"]  # one new pipe: written on its own (sesam_apply)
    # Drift on the node's variables is put back.
    sesam.set_env_values({"erp-host": "hand-edited", "retries": 3})
    sesam.reset_log()
    sync(var_env)
    assert writes(sesam) == ["PUT /api/env"] and sesam.env_values()["erp-host"] == "erp2.example.org"


def test_diff_shows_variable_values(var_env, config_repo: WorkRepo, sesam: SesamEmulator):
    config_repo.write({"variables/node-env.json": json.dumps({"erp-host": "erp.example.org"})})
    commit(config_repo, "variables")
    result = run_cli(var_env, "diff")
    assert result.returncode == 1, output(result)
    assert '+ erp-host = "erp.example.org"' in result.stdout


def test_a_removed_variable_goes_after_the_config_that_used_it(var_env, config_repo: WorkRepo,
                                                               sesam: SesamEmulator):
    config_repo.write({
        "variables/node-env.json": json.dumps({"old-host": "a", "keep": "k"}),
        "pipes/old.conf.json": entity_json(pipe("old", url="http://$ENV(old-host)/")),
    })
    commit(config_repo, "old")
    sync(var_env)
    config_repo.write({
        "variables/node-env.json": json.dumps({"new-host": "b", "keep": "k"}),
        "pipes/old.conf.json": None,
        "pipes/new.conf.json": entity_json(pipe("new", url="http://$ENV(new-host)/")),
    })
    commit(config_repo, "old out, new in")
    sesam.reset_log()
    sync(var_env)
    # new-host arrives before the config needing it; old-host leaves after the config that used it.
    assert writes(sesam) == ["PUT /api/env", "POST /api/pipes", "DELETE /api/pipes/old", "PUT /api/env"]
    assert sesam.env_values() == {"new-host": "b", "keep": "k"}


@pytest.mark.parametrize(("files", "named"), [
    ({"variables/node-env.json": json.dumps({"other": "x"}),
      "pipes/erp-in.conf.json": entity_json(pipe("erp-in", url="http://$ENV(erp-host)/"))},
     ["variables/node-env.json", "pipes/erp-in.conf.json", "erp", "erp-host"]),
    ({"variables/node-env.json": json.dumps(["not", "an", "object"])},
     ["variables/node-env.json", "JSON object"]),
    ({"variables/node-env.json": json.dumps({"erp-host": "x"}),
      "pipes/erp-in.conf.json": entity_json(pipe("erp-in", url="http://$ENV(erp-host/"))},
     ["pipes/erp-in.conf.json", "erp", "$ENV(", "no closing parenthesis"]),
    ({"variables/node-env.json": json.dumps({"erp-host": None})},
     ["variables/node-env.json", "erp-host", "null"]),
], ids=["undefined-variable", "not-an-object", "unclosed-env", "null-value"])
def test_bad_variables_are_refused_with_nothing_written(var_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                        files: dict[str, str], named: list[str]):
    config_repo.write({"variables/node-env.json": json.dumps({"erp-host": "ok"})})
    commit(config_repo, "good variables")
    sync(var_env)
    config_repo.write(files)
    commit(config_repo, "bad")
    before = sesam.entities()
    sesam.reset_log()
    out = sync(var_env, expect=2)
    for word in named:
        assert word in out, (word, out)
    assert writes(sesam) == []
    assert sesam.entities() == before


def test_without_a_variables_file_env_names_are_checked_against_the_node(app_env, config_repo: WorkRepo,
                                                                       sesam: SesamEmulator):
    sesam.refuse_unknown_env = False  # the product must not rely on the node
    config_repo.write({"pipes/erp-in.conf.json": entity_json(pipe("erp-in", url="http://$ENV(erp-host)/"))})
    commit(config_repo, "erp")
    sesam.reset_log()
    out = sync(app_env, expect=2)
    assert "erp-host" in out and "GET /api/env" in out and writes(sesam) == []
    sesam.set_env_values({"erp-host": "erp.example.org"})
    sync(app_env)
    assert "erp" in {e["_id"] for e in sesam.entities()}
    assert sesam.env_values() == {"erp-host": "erp.example.org"}  # not managed: left alone


# --------------------------------------------------------------------------- secrets
@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"db-password": DB_PASSWORD}))
    path.chmod(0o600)
    return path


def test_a_changed_secret_is_uploaded_once_and_hand_set_secrets_are_kept(
        app_env, config_repo: WorkRepo, sesam: SesamEmulator, secrets_file: Path, state_dir: Path):
    env = {**app_env, "SECRETS_FILE": str(secrets_file)}
    sesam.set_env_values({"db-host": "db.example.org"})
    sesam.set_secret_values({"jwt": "set-by-hand-jwt-value"})
    config_repo.write({"systems/db.conf.json": entity_json(db_system())})
    commit(config_repo, "db")
    out = sync(env)
    assert sesam.secret_values() == {"jwt": "set-by-hand-jwt-value", "db-password": DB_PASSWORD}
    sesam.reset_log()
    sync(env)
    assert writes(sesam) == []  # nothing changed: no secret sent again
    secrets_file.write_text(json.dumps({"db-password": DB_PASSWORD_2}))
    sesam.reset_log()
    out += sync(env)
    assert writes(sesam) == ["POST /api/secrets"]
    assert sesam.secret_values()["db-password"] == DB_PASSWORD_2
    sesam.reset_log()
    out += sync(env)
    assert writes(sesam) == []
    history = run_cli(env, "history")
    assert "db-password: changed" in history.stdout + out
    for value in (DB_PASSWORD, DB_PASSWORD_2):
        assert value not in out + history.stdout + history.stderr
        for file in state_dir.rglob("*"):
            if file.is_file():
                assert value.encode() not in file.read_bytes(), file


def test_secret_names_must_exist_with_a_source_and_only_warn_without(app_env, config_repo: WorkRepo,
                                                                   sesam: SesamEmulator, secrets_file: Path):
    sesam.set_env_values({"db-host": "db.example.org"})
    config_repo.write({"systems/db.conf.json": entity_json(db_system("$SECRET(nowhere)"))})
    commit(config_repo, "db needs a secret nobody has")
    sesam.reset_log()
    out = sync({**app_env, "SECRETS_FILE": str(secrets_file)}, expect=2)
    assert "systems/db.conf.json" in out and "nowhere" in out and writes(sesam) == []
    out = sync(app_env)  # no source: a warning, and existing setups keep deploying
    assert "nowhere" in out and "no secret source" in out
    # A secret scoped to the system satisfies the check.
    sesam.set_env_values({"db-host": "db.example.org"})
    httpx.post(f"{sesam.api_url}/systems/db/secrets", json={"nowhere": "scoped-value-123"},  # type: ignore[attr-defined]
               headers={"Authorization": f"Bearer {app_env['JWT']}"}).raise_for_status()
    config_repo.write({"pipes/more.conf.json": entity_json(pipe("more"))})
    commit(config_repo, "more")
    sync({**app_env, "SECRETS_FILE": str(secrets_file)})


@pytest.fixture
def vault() -> Iterator[VaultEmulator]:
    emulator = VaultEmulator(token=VAULT_ROOT)
    emulator.put("sesam/db-password", {"value": DB_PASSWORD})
    with emulator.serve() as server:
        emulator.url = server.url  # type: ignore[attr-defined]
        yield emulator


@pytest.mark.parametrize("failure", ["403", "404", "500", "hang", "not-a-string"])
def test_vault_failures_are_refusals_naming_the_secret(app_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                       vault: VaultEmulator, failure: str):
    env = {**app_env, "VAULT_URL": vault.url, "VAULT_TOKEN": VAULT_ROOT,  # type: ignore[attr-defined]
           "VAULT_PATH_PREFIX": "sesam/", "VAULT_TIMEOUT": "1"}
    sesam.set_env_values({"db-host": "db.example.org"})
    config_repo.write({"systems/db.conf.json": entity_json(db_system())})
    commit(config_repo, "db")
    if failure == "403":
        vault.add_token("narrow-token-123", allowed=["secret/other/"])
        env["VAULT_TOKEN"] = "narrow-token-123"
    elif failure == "404":
        env["VAULT_PATH_PREFIX"] = "elsewhere/"
    elif failure == "500":
        vault.fail_next(500, times=10)
    elif failure == "hang":
        vault.hang()
    else:
        vault.put("sesam/db-password", {"value": 12345})
    before = sesam.entities()
    sesam.reset_log()
    try:
        out = sync(env, expect=2)
    finally:
        vault.hang(False)
    assert "db-password" in out and "systems/db.conf.json" in out, out
    assert writes(sesam) == [] and sesam.entities() == before
    assert DB_PASSWORD not in out and VAULT_ROOT not in out


def test_vault_secret_is_deployed(app_env, config_repo: WorkRepo, sesam: SesamEmulator, vault: VaultEmulator):
    env = {**app_env, "VAULT_URL": vault.url, "VAULT_TOKEN": VAULT_ROOT,  # type: ignore[attr-defined]
           "VAULT_PATH_PREFIX": "sesam/"}
    sesam.set_env_values({"db-host": "db.example.org"})
    config_repo.write({"systems/db.conf.json": entity_json(db_system())})
    commit(config_repo, "db")
    out = sync(env)
    assert sesam.secret_values()["db-password"] == DB_PASSWORD
    assert DB_PASSWORD not in out and VAULT_ROOT not in out


# --------------------------------------------------------------------------- the deployer's own system
BASE = [*BASE_PIPES, *BASE_SYSTEMS, BASE_METADATA]


@pytest.mark.parametrize("generation", ["g1-image", "g1x-autodeployer-path", "g2-environment"])
def test_the_deployers_own_system_is_kept(app_env, config_repo: WorkRepo, sesam: SesamEmulator, generation: str,
                                          state_dir: Path):
    env = dict(app_env)
    if generation == "g1-image":
        own = microservice("github-autodeployer", "sesamcommunity/github-autodeployer:latest",
                           GITHUB_USER="acme", GITHUB_PROJECT="config")
    elif generation == "g1x-autodeployer-path":
        own = microservice("deployer", "acme/custom-sync:2", GIT_REPO="git@example.org:x/y.git")
        env["AUTODEPLOYER_PATH"] = "systems/deployer.conf.json"
    else:
        own = microservice("deployer", "acme/custom-sync:2", GIT_REPO=app_env["GIT_URL"])
    sesam.load([*BASE, own])
    config_repo.write({"pipes/new.conf.json": entity_json(pipe("new"))})
    commit(config_repo, "a new pipe")
    sync(env)
    live = {e["_id"]: e for e in sesam.entities()}
    assert live[own["_id"]]["docker"] == own["docker"] and "new" in live
    notices = json.loads(history_rows(state_dir)[-1]["details"]).get("notices", [])
    assert any("kept the deployer's own system" in n for n in notices), notices
    # A commit that would change it is refused, saying how to manage it in Git.
    config_repo.write({f"systems/{own['_id']}.conf.json": entity_json({**own, "docker": {**own["docker"],
                                                                                        "memory": 64}})})
    commit(config_repo, "touch the deployer")
    sesam.reset_log()
    out = sync(env, expect=2)
    assert f"SELF_ID={own['_id']}" in out and writes(sesam) == []


def test_self_id_manages_the_own_system_in_git(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    own = microservice("deployer", "acme/autodeployer:1")
    sesam.load([*BASE, own])
    changed = {**own, "docker": {**own["docker"], "memory": 64}}
    config_repo.write({"systems/deployer.conf.json": entity_json(changed)})
    commit(config_repo, "deployer in Git")
    sync({**app_env, "SELF_ID": "deployer"})
    assert {e["_id"]: e for e in sesam.entities()}["deployer"]["docker"]["memory"] == 64


# --------------------------------------------------------------------------- orchestrator
def test_orchestrator_managed_entities_are_kept(app_env, config_repo: WorkRepo, sesam: SesamEmulator):
    in_git = pipe("orders")
    rewritten = {**in_git, "description": "rewritten by the orchestrator",
                 "metadata": {"orchestrator": {"original_configuration": in_git}}}
    sesam.load([rewritten, *BASE_PIPES[1:], *BASE_SYSTEMS, BASE_METADATA])
    sesam.reset_log()
    sync({**app_env, "ORCHESTRATOR": "true"})
    assert writes(sesam) == []
    sync(app_env)  # without ORCHESTRATOR the Git file wins
    assert {e["_id"]: e for e in sesam.entities()}["orders"] == in_git


# --------------------------------------------------------------------------- the service keeps running
def test_service_refuses_bad_variables_and_never_shows_a_secret(var_env, config_repo: WorkRepo,
                                                                sesam: SesamEmulator, service, state_dir: Path):
    env = {**var_env, "SECRET_db-password": DB_PASSWORD, "SYNC_INTERVAL": "0.5", "ADMIN_TOKEN": ADMIN_TOKEN}
    config_repo.write({"variables/node-env.json": "[1, 2]",
                       "systems/db.conf.json": entity_json(db_system())})
    commit(config_repo, "bad variables file")
    running = service(env)
    from ..helpers import wait_for

    def status() -> str:
        return httpx.get(running.url + "/api/apps", timeout=5).text

    wait_for(lambda: "refused" in status(), what="the refusal")
    assert "node-env.json" in status() and writes(sesam) == []
    config_repo.write({"variables/node-env.json": json.dumps({"db-host": "db.example.org"})})
    commit(config_repo, "fixed")
    wait_for(lambda: sesam.secret_values().get("db-password") == DB_PASSWORD, what="the secret deployed")
    pages = [httpx.get(running.url + p, timeout=5).text for p in ("/", "/api/apps", "/api/apps/node/history")]
    cmdline = Path(f"/proc/{running.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert running.proc.poll() is None
    for text in [*pages, cmdline, ps, running.log()]:
        assert DB_PASSWORD not in text
    for file in state_dir.rglob("*"):
        if file.is_file():
            assert DB_PASSWORD.encode() not in file.read_bytes(), file


# --------------------------------------------------------------------------- several environments
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sesam-two-nodes" / "apps.yaml"


def test_two_nodes_from_one_repository_with_the_example(tmp_path: Path, git_server, config_repo: WorkRepo,
                                                        vault: VaultEmulator, state_dir: Path):
    """examples/sesam-two-nodes/apps.yaml, pointed at two emulated nodes, a local Git server and Vault."""
    from ..helpers import GIT_TOKEN, SESAM_JWT, base_env

    vault.put("sesam/test/db-password", {"value": "test-db-SECRET-1"})
    vault.put("sesam/prod/db-password", {"value": "prod-db-SECRET-2"})
    config_repo.write({
        "node/pipes/orders.conf.json": entity_json(pipe("orders", url="http://$ENV(erp-host)/")),
        "node/pipes/experiment.conf.json": entity_json(pipe("experiment")),
        "node/systems/db.conf.json": entity_json(db_system()),
        "node/variables/variables-test.json": json.dumps({"erp-host": "erp.test", "db-host": "db.test"}),
        "node/variables/variables-prod.json": json.dumps({"erp-host": "erp.prod", "db-host": "db.prod"}),
        "node/deployment/whitelist-prod.txt": "pipes/orders.conf.json\nsystems/db.conf.json\n",
    })
    commit(config_repo, "two environments")
    nodes = {"test": SesamEmulator(jwt=SESAM_JWT), "prod": SesamEmulator(jwt=SESAM_JWT)}
    text = EXAMPLE.read_text().replace("https://github.com/acme/sesam-config.git",
                                       git_server.url_for("acme/config.git"))
    text = text.replace("https://vault.example.org", vault.url)  # type: ignore[attr-defined]
    with nodes["test"].serve() as test_server, nodes["prod"].serve() as prod_server:
        text = text.replace("https://datahub-test1234.sesam.cloud/api", test_server.url + "/api")
        text = text.replace("https://datahub-prod5678.sesam.cloud/api", prod_server.url + "/api")
        config_file = tmp_path / "apps.yaml"
        config_file.write_text(text)
        env = base_env(GITHUB_TOKEN=GIT_TOKEN, SESAM_TEST_JWT=SESAM_JWT, SESAM_PROD_JWT=SESAM_JWT,
                       VAULT_TOKEN=VAULT_ROOT, STATE_DIR=str(state_dir))
        result = run_cli(env, "--config", str(config_file), "sync")
        assert result.returncode == 0, output(result)
        test_ids = {e["_id"] for e in nodes["test"].entities()}
        prod_ids = {e["_id"] for e in nodes["prod"].entities()}
        assert {"orders", "experiment", "db"} <= test_ids
        assert {"orders", "db"} <= prod_ids and "experiment" not in prod_ids
        assert nodes["test"].env_values() == {"erp-host": "erp.test", "db-host": "db.test"}
        assert nodes["prod"].env_values() == {"erp-host": "erp.prod", "db-host": "db.prod"}
        assert nodes["test"].secret_values() == {"db-password": "test-db-SECRET-1"}
        assert nodes["prod"].secret_values() == {"db-password": "prod-db-SECRET-2"}
        assert "SECRET-" not in output(result)

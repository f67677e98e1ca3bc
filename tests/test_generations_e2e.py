"""Every github-autodeployer generation, end to end: `autodeployer run` as the microservice would run it.

For each generation a repository laid out the way that generation expected is deployed by the service
(a subprocess) started with that generation's environment variables only, against the Sesam emulator,
until the node equals Git with the deployer's own system intact. The addresses of the loopback servers
(`SESAM_API_URL`, `GITHUB_URL`, `GITHUB_API_URL`, `VAULT_URL`, `STATE_DIR`, `PORT`) are the only
additions, because the servers are not where the microservice would find them.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator
from autodeployer_emulators.vault import VaultEmulator

from .conftest import Service, ServiceFactory
from .helpers import GIT_TOKEN, SESAM_JWT, base_env, entity_json, pipe, run_cli, system, wait_for
from .sshserver import SshServer

DB_PASSWORD = "dbpw-SECRET-e2e-5a6b7c8d"
DB_PASSWORD_2 = "dbpw-SECRET-e2e-rotated-9e8f"
HAND_SET_JWT = "handset-SECRET-jwt-1f2e3d"
VAULT_GITHUB_TOKEN = "ghp_SECRETvaultlogin0a1b2c3d4e5f"
WRITES = ("PUT", "POST", "DELETE")


def own_system(_id: str, image: str, **environment: str) -> dict[str, Any]:
    """The deployer's own microservice, as the node runs it (the secrets are node secrets)."""
    return {"_id": _id, "type": "system:microservice",
            "docker": {"image": image, "port": 5000, "environment": environment}}


def live(sesam: SesamEmulator) -> dict[str, dict[str, Any]]:
    return {e["_id"]: e for e in sesam.entities() if e.get("type") != "metadata"}


def writes(sesam: SesamEmulator) -> list[str]:
    return [f"{r.method} {r.path}" for r in sesam.requests if r.method in WRITES]


def new_repo(tmp_path: Path, name: str, files: dict[str, str]) -> WorkRepo:
    repo = WorkRepo.create(tmp_path / "git" / "acme" / f"{name}.git", tmp_path / f"work-{name}", branch="master")
    repo.write(files)
    repo.commit("the configuration as this generation laid it out")
    repo.push()
    return repo


def wait_until_equal(sesam: SesamEmulator, expected: dict[str, dict[str, Any]], service: Service) -> None:
    def equal() -> bool:
        if service.proc.poll() is not None:
            raise AssertionError(f"the service stopped:\n{service.log()}")
        return live(sesam) == expected

    try:
        wait_for(equal, timeout=40, interval=0.2, what="the node to equal Git")
    except AssertionError:
        raise AssertionError(f"node: {sorted(live(sesam))}, want {sorted(expected)}\n{service.log()}") from None


def surfaces(service: Service, app: str) -> dict[str, str]:
    """Every place a secret could leak to: logs, status page, API, history (CLI), argv of every process."""
    texts = {"log": service.log(), "ps": subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                        text=True).stdout}
    for path in ("/", f"/apps/{app}", "/api/apps", f"/api/apps/{app}", f"/api/apps/{app}/history", "/metrics"):
        texts[path] = httpx.get(service.url + path, timeout=10).text
    history = run_cli(service.env, "history", "--diff")  # the CLI has no --json; /api/.../history is the JSON
    assert history.returncode == 0, history.stdout + history.stderr
    texts["history --diff"] = history.stdout + history.stderr
    return texts


def assert_no_secret(texts: dict[str, str], *secrets: str) -> None:
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret value is shown in {where}"


@pytest.fixture
def node() -> Iterator[SesamEmulator]:
    emulator = SesamEmulator(jwt=SESAM_JWT)
    with emulator.serve() as server:
        emulator.api_url = server.url + "/api"  # type: ignore[attr-defined]
        yield emulator


# --------------------------------------------------------------------------- first generation (G1)
G1_OWN = own_system("github-autodeployer", "sesamcommunity/github-autodeployer:latest",
                    GITHUB_USER="acme", GITHUB_PROJECT="config", GITHUB_TOKEN="$SECRET(github-token)",
                    JWT="$SECRET(jwt)")


def test_first_generation_github_user_project_token(tmp_path: Path, git_server: GitHttpServer,
                                                    node: SesamEmulator, service: ServiceFactory) -> None:
    """G1: GITHUB_USER/GITHUB_PROJECT/GITHUB_TOKEN; pipes/, systems/ and the own system file at the root."""
    files = {
        "pipes/orders.conf.json": entity_json(pipe("orders")),
        "pipes/customers.conf.json": entity_json(pipe("customers", dataset="crm")),
        "systems/crm.conf.json": entity_json(system("crm")),
        "systems/github-autodeployer.conf.json": entity_json(G1_OWN),  # G1 repositories held it
        "node-metadata.conf.json": entity_json({"_id": "node", "type": "metadata", "namespaced_identifiers": False}),
    }
    repo = new_repo(tmp_path, "config", files)
    github = GitHubEmulator(token=GIT_TOKEN)
    github.add_repo("acme", "config", repo_id=4242, default_branch="master", git_dir=repo.bare_path)
    node.load([G1_OWN, pipe("stale")])
    node.set_secret_values({"jwt": HAND_SET_JWT})
    with github.serve() as gh:
        env = base_env(GITHUB_USER="acme", GITHUB_PROJECT="config", GITHUB_TOKEN=GIT_TOKEN, JWT=SESAM_JWT,
                       GITHUB_URL=git_server.url, GITHUB_API_URL=gh.url,
                       SESAM_API_URL=node.api_url,  # type: ignore[attr-defined]
                       STATE_DIR=str(tmp_path / "state"), SYNC_INTERVAL="0.5")
        running = service(env)
        expected = {_id: json.loads(text) for _id, text in
                    ((json.loads(t)["_id"], t) for p, t in files.items() if p.startswith(("pipes/", "systems/")))}
        wait_until_equal(node, expected, running)
        metadata = next(e for e in node.entities() if e["type"] == "metadata")
        assert metadata == json.loads(files["node-metadata.conf.json"])
        assert live(node)["github-autodeployer"] == G1_OWN
        wait_for(lambda: github.statuses("acme", "config", repo.head), what="a commit status on GitHub")
        assert node.secret_values() == {"jwt": HAND_SET_JWT}
        texts = surfaces(running, "config")
        assert running.proc.poll() is None
        assert_no_secret(texts, GIT_TOKEN, SESAM_JWT, HAND_SET_JWT)


# --------------------------------------------------------------------------- middle generation (G1.x)
G1X_OWN = own_system("autodeployer", "sesamcommunity/sesam-autodeployer:1.4",
                     GIT_REPO="git@github.com:acme/config.git", DEPLOY_TOKEN="$SECRET(deploy-key)",
                     AUTODEPLOYER_PATH="systems/autodeployer.conf.json", ENV_VARS_FILENAME="node-env.json",
                     SYNC_ROOT="sesam-node")


def test_middle_generation_deploy_key_over_ssh(tmp_path: Path, sshd: SshServer, node: SesamEmulator,
                                              service: ServiceFactory) -> None:
    """G1.x: GIT_REPO (ssh) + DEPLOY_TOKEN (the deploy key text) + AUTODEPLOYER_PATH + ENV_VARS_FILENAME; the
    repository never held the deployer's own system; variables in env-vars/ beside pipes/."""
    files = {
        "README.md": "our node\n",
        "sesam-node/pipes/erp-orders.conf.json": entity_json(pipe("erp-orders", url="$ENV(erp-url)/orders")),
        "sesam-node/systems/erp.conf.json": entity_json(system("erp", url="$ENV(erp-url)/%s")),
        "sesam-node/env-vars/node-env.json": "\ufeff" + json.dumps({"erp-url": "http://erp.example.org"}),
    }
    repo = new_repo(tmp_path, "config", files)
    node.load([G1X_OWN, pipe("stale")])
    env = base_env(GIT_REPO=sshd.url_for(repo.bare_path), DEPLOY_TOKEN=sshd.deploy_key,
                   GIT_KNOWN_HOSTS=sshd.known_hosts, SYNC_ROOT="sesam-node", JWT=SESAM_JWT,
                   AUTODEPLOYER_PATH="systems/autodeployer.conf.json", ENV_VARS_FILENAME="node-env.json",
                   SESAM_API_URL=node.api_url,  # type: ignore[attr-defined]
                   STATE_DIR=str(tmp_path / "state"), SYNC_INTERVAL="0.5")
    running = service(env)
    expected = {"erp-orders": pipe("erp-orders", url="$ENV(erp-url)/orders"),
                "erp": system("erp", url="$ENV(erp-url)/%s"), "autodeployer": G1X_OWN}
    wait_until_equal(node, expected, running)
    assert node.env_values() == {"erp-url": "http://erp.example.org"}
    assert "Accepted publickey" in sshd.log()
    # A variables-only commit is deployed on its own.
    repo.write({"sesam-node/env-vars/node-env.json": json.dumps({"erp-url": "http://erp2.example.org"})})
    repo.commit("move erp")
    repo.push()
    wait_for(lambda: node.env_values() == {"erp-url": "http://erp2.example.org"}, what="the new variable")
    assert live(node) == expected
    key_body = "".join(sshd.deploy_key.strip().splitlines()[1:-1])
    texts = surfaces(running, "config")
    assert_no_secret(texts, key_body[:40], SESAM_JWT)


# --------------------------------------------------------------------------- last generation (G2)
def g2_files(orders_description: str = "orders") -> dict[str, str]:
    return {
        "node/pipes/orders.conf.json": entity_json(pipe("orders", description=orders_description)),
        "node/pipes/managed.conf.json": entity_json(pipe("managed")),
        "node/systems/db.conf.json": entity_json({"_id": "db", "type": "system:postgresql",
                                                  "host": "$ENV(db-host)", "password": "$SECRET(db-password)"}),
        "node/node-metadata.conf.json": entity_json({"_id": "node", "type": "metadata",
                                                     "namespaced_identifiers": False}),
        "variables/variables-prod.json": json.dumps({"db-host": "db.prod.example.org"}),
    }


G2_OWN = own_system("github-autodeployer", "sesamcommunity/github-autodeployer:2.0",
                    GIT_REPO="git@github.com:acme/config.git", DEPLOY_TOKEN="$SECRET(deploy-key)",
                    TAG="production", SLEEP_INTERVAL="60", AUTODEPLOYER_PATH="systems/github-autodeployer.conf.json",
                    VARIABLES_FILE_PATH="variables/variables-prod.json", VAULT_URL="https://vault.acme.org",
                    VAULT_GIT_TOKEN="$SECRET(vault-git-token)", VAULT_MOUNTING_POINT="sesam",
                    VAULT_PATH_PREFIX="prod/", ORCHESTRATOR="true", JWT="$SECRET(jwt)")


def secret_posts(sesam: SesamEmulator) -> int:
    return sum(1 for r in sesam.requests if r.method == "POST" and r.path == "/api/secrets")


def test_last_generation_variables_vault_tag_orchestrator(tmp_path: Path, sshd: SshServer, node: SesamEmulator,
                                                          service: ServiceFactory) -> None:
    """G2: + VARIABLES_FILE_PATH, Vault with its GitHub login, TAG, SLEEP_INTERVAL, ORCHESTRATOR."""
    vault = VaultEmulator(mounts=("sesam",))
    vault.add_github_token(VAULT_GITHUB_TOKEN, allowed=["sesam/prod/"])
    vault.put("prod/db-password", {"password": DB_PASSWORD}, mount="sesam")
    repo = new_repo(tmp_path, "config", g2_files())
    repo.git("tag", "production")
    repo.git("push", "origin", "production")
    repo.write({"node/pipes/orders.conf.json": entity_json(pipe("orders", description="not tagged yet"))})
    repo.commit("on master, not tagged")
    repo.push()
    managed_in_git = pipe("managed")
    rewritten = {**managed_in_git, "description": "rewritten by the orchestrator",
                 "metadata": {"orchestrator": {"original_configuration": managed_in_git}}}
    node.load([G2_OWN, rewritten, pipe("stale")])
    node.set_secret_values({"jwt": HAND_SET_JWT})
    with vault.serve() as vault_server:
        env = base_env(GIT_REPO=sshd.url_for(repo.bare_path), DEPLOY_TOKEN=sshd.deploy_key,
                       GIT_KNOWN_HOSTS=sshd.known_hosts, TAG="production", SLEEP_INTERVAL="0.5",
                       SYNC_ROOT="node", JWT=SESAM_JWT, AUTODEPLOYER_PATH="systems/github-autodeployer.conf.json",
                       VARIABLES_FILE_PATH="variables/variables-prod.json", VAULT_URL=vault_server.url,
                       VAULT_GIT_TOKEN=VAULT_GITHUB_TOKEN, VAULT_MOUNTING_POINT="sesam", VAULT_PATH_PREFIX="prod/",
                       ORCHESTRATOR="true", SESAM_API_URL=node.api_url,  # type: ignore[attr-defined]
                       STATE_DIR=str(tmp_path / "state"))
        running = service(env)
        db = json.loads(g2_files()["node/systems/db.conf.json"])
        expected = {"orders": pipe("orders", description="orders"), "managed": rewritten, "db": db,
                    "github-autodeployer": G2_OWN}
        wait_until_equal(node, expected, running)  # the tag, not master's newer commit
        assert node.env_values() == {"db-host": "db.prod.example.org"}
        assert node.secret_values() == {"jwt": HAND_SET_JWT, "db-password": DB_PASSWORD}
        assert any(r.path == "/v1/auth/github/login" for r in vault.requests)
        # Moving the tag deploys.
        repo.git("tag", "-f", "production")
        repo.git("push", "-f", "origin", "production")
        wait_for(lambda: live(node)["orders"].get("description") == "not tagged yet", what="the moved tag")
        # A changed value in Vault is uploaded once by the next sync, and not again.
        vault.put("prod/db-password", {"password": DB_PASSWORD_2}, mount="sesam")
        node.reset_log()
        for _ in range(2):
            result = run_cli(env, "sync")
            assert result.returncode == 0, result.stdout + result.stderr
        assert secret_posts(node) == 1 and node.secret_values()["db-password"] == DB_PASSWORD_2
        time.sleep(1.5)  # three more polls of the service
        assert secret_posts(node) == 1
        assert node.secret_values()["jwt"] == HAND_SET_JWT
        texts = surfaces(running, "config")
        assert "db-password: changed" in texts["history --diff"]
        assert running.proc.poll() is None
        assert_no_secret(texts, DB_PASSWORD, DB_PASSWORD_2, VAULT_GITHUB_TOKEN, SESAM_JWT, HAND_SET_JWT)
        for file in (tmp_path / "state").rglob("*"):
            if file.is_file():
                for value in (DB_PASSWORD, DB_PASSWORD_2):
                    assert value.encode() not in file.read_bytes(), file


# --------------------------------------------------------------------------- bad input, the service running
VAULT_ROOT = "vaultroot-SECRET-e2e-7c6d5e"


def newest(service: Service, app: str) -> dict[str, Any]:
    rows = httpx.get(f"{service.url}/api/apps/{app}/history", timeout=10).json()["history"]
    return dict(rows[0]) if rows else {}


@pytest.mark.parametrize("case", ["variables-not-an-object", "unclosed-env", "secret-not-a-string",
                                  "vault-403", "vault-404", "vault-500", "vault-hang"])
def test_bad_input_is_refused_naming_it_while_the_service_keeps_running(
        tmp_path: Path, git_server: GitHttpServer, node: SesamEmulator, service: ServiceFactory, case: str) -> None:
    vault = VaultEmulator(token=VAULT_ROOT, mounts=("sesam",))
    vault.put("prod/db-password", {"password": DB_PASSWORD}, mount="sesam")
    files = g2_files()
    repo = new_repo(tmp_path, "config", files)
    with vault.serve() as vault_server:
        env = base_env(GIT_URL=git_server.url_for("acme/config.git"), GITHUB_TOKEN=GIT_TOKEN, SYNC_ROOT="node",
                       JWT=SESAM_JWT, VARIABLES_FILE_PATH="variables/variables-prod.json",
                       VAULT_URL=vault_server.url, VAULT_TOKEN=VAULT_ROOT, VAULT_MOUNTING_POINT="sesam",
                       VAULT_PATH_PREFIX="prod/", VAULT_TIMEOUT="0.5", SLEEP_INTERVAL="0.3",
                       SESAM_API_URL=node.api_url,  # type: ignore[attr-defined]
                       STATE_DIR=str(tmp_path / "state"), APP_NAME="node")
        running = service(env)
        wait_for(lambda: newest(running, "node").get("result") == "synced", what="the first sync")
        before, first = node.entities(), newest(running, "node")["id"]
        node.reset_log()
        named = {"variables-not-an-object": ["variables/variables-prod.json", "JSON object"],
                 "unclosed-env": ["node/pipes/orders.conf.json", "orders", "$ENV(", "no closing parenthesis"],
                 "secret-not-a-string": ["db-password", "node/systems/db.conf.json", "not a string"],
                 "vault-403": ["db-password", "node/systems/db.conf.json", "permission denied"],
                 "vault-404": ["db-new-password", "node/systems/db.conf.json", "in no secret source"],
                 "vault-500": ["db-password", "node/systems/db.conf.json", "500"],
                 "vault-hang": ["db-password", "node/systems/db.conf.json", "no answer within"]}[case]
        change = {"node/pipes/orders.conf.json": entity_json(pipe("orders", description="a change to deploy"))}
        if case == "variables-not-an-object":
            change["variables/variables-prod.json"] = "[\"db-host\"]"
        elif case == "unclosed-env":
            change["node/pipes/orders.conf.json"] = entity_json(pipe("orders", url="$ENV(erp-host/x"))
        elif case == "secret-not-a-string":
            vault.put("prod/db-password", {"password": 4711}, mount="sesam")
        elif case == "vault-403":
            vault.revoke_token(VAULT_ROOT)
        elif case == "vault-404":  # a secret on the node still counts: a new name Vault does not have
            change["node/systems/db.conf.json"] = g2_files()["node/systems/db.conf.json"].replace(
                "db-password", "db-new-password")
        elif case == "vault-500":
            vault.fail_next(500, times=1000)
        else:
            vault.hang()
        try:
            repo.write(change)
            repo.commit(case)
            repo.push()
            row = wait_for(lambda: (r := newest(running, "node")).get("id", 0) > first and r, what="the refusal")
        finally:
            vault.hang(False)
        text = json.dumps(row)
        assert row["result"] == "refused", text
        for word in named:
            assert word in text, (word, text)
        assert writes(node) == [] and node.entities() == before
        assert running.proc.poll() is None and httpx.get(running.url + "/healthz", timeout=5).status_code == 200
        assert_no_secret({"row": text, "log": running.log()}, DB_PASSWORD, VAULT_ROOT)

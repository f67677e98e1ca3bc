"""`autodeployer demo`: the whole loop on loopback, with nothing to install or configure.

It creates a Git repository holding example Sesam configuration, serves it over smart HTTP with a
token (as GitHub would), starts the Sesam emulator, and runs the real service against them. The
user commits in the printed working directory and watches the change reach the emulated node.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import tempfile
from pathlib import Path

from pydantic import SecretStr

from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .config.loader import AppConfig, Config, Policy, ServiceSettings, repo_full_name
from .runtime import bind_listener, make_redactor, setup_logging
from .serve import serve
from .sources.spec import SourceSpec
from .targets import sesam

DEMO_VARIABLES = "variables/demo-env.json"
DEMO_CONFIG: dict[str, object] = {
    "node-metadata.conf.json": {"_id": "node", "type": "metadata", "namespaced_identifiers": False},
    "systems/crm.conf.json": {
        "_id": "crm",
        "type": "system:url",
        "url_pattern": "http://$ENV(crm-host)/api/%s",
    },
    # The node's variables, deployed with PUT /api/env; every $ENV(...) above must be defined here.
    "variables/demo-env.json": {"crm-host": "crm.example.org"},
    "pipes/crm-person.conf.json": {
        "_id": "crm-person",
        "type": "pipe",
        "source": {"type": "json", "system": "crm", "url": "persons"},
    },
    "pipes/crm-person-enriched.conf.json": {
        "_id": "crm-person-enriched",
        "type": "pipe",
        "source": {"type": "dataset", "dataset": "crm-person"},
        "transform": {"type": "dtl", "rules": {"default": [["copy", "*"]]}},
    },
    "README.md": "Sesam configuration for the autodeployer demo. Edit, commit, push.\n",
}


DEMO_AUTHOR = {"GIT_AUTHOR_NAME": "autodeployer demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
               "GIT_COMMITTER_NAME": "autodeployer demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid"}


def _seed(repo: WorkRepo) -> None:
    files = {
        path: (json.dumps(value, indent=2) + "\n") if isinstance(value, dict) else str(value)
        for path, value in DEMO_CONFIG.items()
    }
    repo.write(files)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "Initial Sesam configuration", env=DEMO_AUTHOR)  # not the emulators' test author
    repo.push()
    # a plain `git push` in the working copy must work for the person trying the demo
    repo.git("branch", "--set-upstream-to=origin/master", "master")
    repo.git("config", "user.name", "Demo User")
    repo.git("config", "user.email", "demo@example.invalid")


def _repository(base: Path) -> WorkRepo:
    """The demo repository; a `--dir` used before keeps its repository and history."""
    bare, work = base / "git" / "demo" / "sesam-config.git", base / "work"
    if (work / ".git").is_dir() and bare.is_dir():
        return WorkRepo(bare, work, branch="master")
    repo = WorkRepo.create(bare, work, branch="master")
    _seed(repo)
    return repo


def run_demo(port: int = 5000, interval: float = 2.0, workdir: str | None = None) -> int:
    sock = bind_listener("127.0.0.1", port, what="--port")  # a busy port fails here, before any banner
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="autodeployer-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    git_token = "demo-" + secrets.token_hex(16)
    jwt = "demo-" + secrets.token_hex(16)
    admin_token = "demo-admin-" + secrets.token_hex(8)
    repo = _repository(base)
    # A --dir made by an older demo has no variables file: deploy it without one rather than refuse it.
    variables = DEMO_VARIABLES if (repo.work_dir / DEMO_VARIABLES).is_file() else None
    git_server = GitHttpServer(base / "git", token=git_token)
    node = SesamEmulator(jwt=jwt)
    with git_server.serve(), node.serve() as node_server:
        url = git_server.url_for("demo/sesam-config.git")
        app = AppConfig(
            name="demo",
            source=SourceSpec(url=url, branch="master", token=SecretStr(git_token), repo_full_name=repo_full_name(url)),
            target=sesam.Spec(api_url=node_server.url + "/api", jwt=SecretStr(jwt),
                              variables_file_path=variables),
            policy=Policy(interval=interval),
        )
        config = Config(
            service=ServiceSettings(state_dir=base / "state", host="127.0.0.1", port=port,
                                    admin_token=SecretStr(admin_token)),
            apps=[app],
        )
        setup_logging(config, make_redactor(config))
        env = {"GIT_URL": url, "GITHUB_TOKEN": git_token, "JWT": jwt, "SESAM_API_URL": node_server.url + "/api",
               "STATE_DIR": str(base / "state"), "APP_NAME": "demo", "ADMIN_TOKEN": admin_token,
               **({"VARIABLES_FILE_PATH": variables} if variables else {})}
        print(_instructions(base, node_server.url, port, interval, env), flush=True)
        try:
            return asyncio.run(serve(config, sock=sock))
        except KeyboardInterrupt:
            return 0
        finally:
            print(f"\nDemo stopped. Its files are in {base}" + ("" if workdir else " (delete them at will)."))


def _instructions(base: Path, node_url: str, port: int, interval: float, env: dict[str, str]) -> str:
    """The banner. It shows the demo's tokens on purpose: they exist only for this demo on loopback,
    and with them every command of the README can be tried against it."""
    work = base / "work"
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    server = f"http://127.0.0.1:{port}"
    return f"""
autodeployer demo
=================
  Git repository (working copy): {work}
  Emulated Sesam node:           {node_url}/api   (config: {node_url}/api/config, needs the JWT)
  Status page:                   http://127.0.0.1:{port}/   (API: /api/apps, metrics: /metrics)
  Poll interval:                 {interval:g} s

Try it, in another terminal:
  cd {work}
  sed -i 's/persons/people/' pipes/crm-person.conf.json
  git commit -qam "Rename the CRM endpoint" && git push -q
and watch the log below (or the status page) report the change within {interval:g} s. Break the config on purpose
(e.g. remove a closing brace, commit, push) and see it refused with the file named, while the node
keeps its last good configuration. Ctrl-C stops the demo.

Every command of the README works against the demo once these are set (demo-only tokens):
  export {exports}
  autodeployer diff                                  # the plan, from Git and the emulated node
  autodeployer status --server {server}
  autodeployer history --server {server} --limit 5
  autodeployer suspend --app demo --server {server}   # actions use ADMIN_TOKEN
  autodeployer resume --app demo --server {server}
  curl -s -H "Authorization: Bearer $JWT" $SESAM_API_URL/config   # the node itself
"""


"""`autodeployer demo`: the whole loop on loopback, with nothing to install or configure.

It creates a Git repository holding example Sesam configuration, serves it over smart HTTP with a
token (as GitHub would), starts the Sesam emulator, and runs the real service against them. The
user commits in the printed working directory and watches the change reach the emulated node.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
from pathlib import Path

from pydantic import SecretStr

from .config import AppConfig, Config, Policy, ServiceSettings, SourceSpec, repo_full_name
from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator
from .runner import serve
from .service import make_redactor, setup_logging
from .targets import sesam

DEMO_CONFIG: dict[str, object] = {
    "node-metadata.conf.json": {"_id": "node", "type": "metadata", "namespaced_identifiers": False},
    "systems/crm.conf.json": {
        "_id": "crm",
        "type": "system:url",
        "url_pattern": "http://crm.example.org/api/%s",
    },
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


def _seed(repo: WorkRepo) -> None:
    files = {
        path: (json.dumps(value, indent=2) + "\n") if isinstance(value, dict) else str(value)
        for path, value in DEMO_CONFIG.items()
    }
    repo.write(files)
    repo.commit("Initial Sesam configuration")
    repo.push()
    # a plain `git push` in the working copy must work for the person trying the demo
    repo.git("branch", "--set-upstream-to=origin/master", "master")
    repo.git("config", "user.name", "Demo User")
    repo.git("config", "user.email", "demo@example.invalid")


def run_demo(port: int = 5000, interval: float = 2.0, workdir: str | None = None) -> int:
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="autodeployer-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    git_token = "demo-" + secrets.token_hex(16)
    jwt = "demo-" + secrets.token_hex(16)
    repo = WorkRepo.create(base / "git" / "demo" / "sesam-config.git", base / "work", branch="master")
    _seed(repo)
    git_server = GitHttpServer(base / "git", token=git_token)
    node = SesamEmulator(jwt=jwt)
    with git_server.serve(), node.serve() as node_server:
        url = git_server.url_for("demo/sesam-config.git")
        app = AppConfig(
            name="demo",
            source=SourceSpec(url=url, branch="master", token=SecretStr(git_token), repo_full_name=repo_full_name(url)),
            target=sesam.Spec(api_url=node_server.url + "/api", jwt=SecretStr(jwt)),
            policy=Policy(interval=interval),
        )
        config = Config(
            service=ServiceSettings(state_dir=base / "state", host="127.0.0.1", port=port),
            apps=[app],
        )
        setup_logging(config, make_redactor(config))
        print(_instructions(base, node_server.url, port, interval), flush=True)
        try:
            return asyncio.run(serve(config))
        except KeyboardInterrupt:
            return 0
        finally:
            print(f"\nDemo stopped. Its files are in {base}" + ("" if workdir else " (delete them at will)."))


def _instructions(base: Path, node_url: str, port: int, interval: float) -> str:
    work = base / "work"
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
"""


"""End to end per Git host: `autodeployer hooks` and `autodeployer run` as subprocesses, the host's
emulator on loopback delivering real pushes, the shared token-checked Git server and the Sesam
emulator as the target.

`Host` adapts one emulator to the scenario every host goes through (`run_scenario`), so each host's
test file states only what differs: its emulator, its settings, its status words.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer_emulators._forge import ForgeEmulator, Sent
from autodeployer_emulators.bitbucket import BitbucketEmulator
from autodeployer_emulators.gitea import GiteaEmulator
from autodeployer_emulators.gitlab import GitLabEmulator
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import (
    ALL_SECRETS,
    GIT_TOKEN,
    WEBHOOK_SECRET,
    entity_json,
    free_port,
    history_rows,
    pipe,
    run_cli,
    stripped,
    wait_for,
)

#: push→synced of each host in this session, printed at the end (`pytest -s`) for BENCHMARKS/the report.
LATENCIES: dict[str, list[float]] = {}


def _serve(emulator: ForgeEmulator, git_dir: Path, path: str) -> Iterator[ForgeEmulator]:
    emulator.add_repo(path, default_branch="master", git_dir=git_dir)
    emulator.delivery_timeout = 5
    with emulator.serve():
        yield emulator


@pytest.fixture
def gitlab(tmp_path: Path) -> Iterator[ForgeEmulator]:
    yield from _serve(GitLabEmulator(token=GIT_TOKEN), tmp_path / "git" / "acme" / "config.git", "acme/config")


@pytest.fixture
def gitea(tmp_path: Path) -> Iterator[ForgeEmulator]:
    yield from _serve(GiteaEmulator(token=GIT_TOKEN, forgejo=True), tmp_path / "git" / "acme" / "config.git",
                      "acme/config")


@pytest.fixture
def bitbucket(tmp_path: Path) -> Iterator[ForgeEmulator]:
    yield from _serve(BitbucketEmulator(token=GIT_TOKEN), tmp_path / "git" / "acme" / "config.git", "ACME/config")


def provider_env(app_env: dict[str, str], provider: str, api_url: str) -> dict[str, str]:
    """The app on `provider`: its API URL and token (also the clone token; no GITHUB_TOKEN), a fixed
    webhook secret, polling effectively off so only deliveries sync, the service itself not
    registering (the CLI does)."""
    env = {k: v for k, v in app_env.items() if k != "GITHUB_TOKEN"}
    upper = provider.upper()
    port = free_port()
    return {**env, "GIT_PROVIDER": provider, f"{upper}_API_URL": api_url, f"{upper}_TOKEN": GIT_TOKEN,
            "WEBHOOK_SECRET": WEBHOOK_SECRET, "SYNC_INTERVAL": "3600", "HEAD_CHECK": "git",
            "REGISTER_WEBHOOK": "false", "PORT": str(port), "PUBLIC_URL": f"http://127.0.0.1:{port}"}


@dataclass
class Host:
    name: str
    emulator: ForgeEmulator
    path: str  # the repository as the host names it
    push: Callable[..., list[Sent]]  # (ref, before, after, tamper=, repository_path=)
    states: Callable[[str], list[str]]  # the status words posted for a sha
    success: str
    env: dict[str, str] = field(default_factory=dict)

    def hook_urls(self) -> list[str]:
        return [str(hook.get("url") or hook.get("config", {}).get("url")) for hook in self.emulator.hooks(self.path)]  # type: ignore[attr-defined]


def commit(repo: WorkRepo, name: str, branch: str | None = None) -> tuple[str, str]:
    before = repo.head
    repo.write({f"pipes/{name}.conf.json": entity_json(pipe(name))})
    repo.commit(f"add {name}")
    repo.push(branch)
    return before, repo.head


def register_hook(host: Host, env: dict[str, str], other_hooks: int = 3) -> str:
    """`hooks register` twice (created, then unchanged) with the host's hooks spread over pages, and
    `hooks list` marking ours."""
    url = env["PUBLIC_URL"] + "/webhook"
    host.emulator.max_page_size = 2
    api = httpx.Client(trust_env=False)
    for index in range(other_hooks):
        _add_foreign_hook(host, api, f"http://127.0.0.1:9/other-{index}")
    created = run_cli(env, "hooks", "register")
    assert created.returncode == 0, created.stderr
    assert " created -> " + url in created.stdout, created.stdout
    again = run_cli(env, "hooks", "register")
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr
    assert host.hook_urls().count(url) == 1
    listed = run_cli(env, "hooks", "list")
    assert listed.returncode == 0, listed.stderr
    ours = [line for line in listed.stdout.splitlines() if line.startswith("*")]
    assert len(ours) == 1 and url in ours[0], listed.stdout
    assert sum("other-" in line for line in listed.stdout.splitlines()) == other_hooks  # every page was read
    return url


def _add_foreign_hook(host: Host, api: httpx.Client, url: str) -> None:
    emulator: Any = host.emulator
    if host.name == "gitlab":
        response = api.post(f"{emulator.api_url}/projects/acme%2Fconfig/hooks", json={"url": url},
                            headers={"PRIVATE-TOKEN": GIT_TOKEN})
    elif host.name == "gitea":
        response = api.post(f"{emulator.api_url}/repos/acme/config/hooks",
                            headers={"Authorization": f"token {GIT_TOKEN}"},
                            json={"type": "gitea", "config": {"url": url, "content_type": "json"}, "events": ["push"]})
    else:
        response = api.post(f"{emulator.base_url}/rest/api/1.0/projects/ACME/repos/config/webhooks",
                            headers={"Authorization": f"Bearer {GIT_TOKEN}"},
                            json={"name": "other", "url": url, "events": ["repo:refs_changed"]})
    assert response.status_code == 201, response.text


def run_scenario(host: Host, service: Any, config_repo: WorkRepo, sesam: SesamEmulator, state_dir: Path) -> None:
    """Register, push, synced within GitHub's latency, status posted, bad auth refused with no sync,
    another repository or branch ignored, a replay recognised, the hook removed."""
    env = host.env
    hook_url = register_hook(host, env)
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    puts = sesam.put_count

    def push(*args: str, **kwargs: Any) -> list[Sent]:
        """Deliveries to our hook (the foreign hooks get theirs too, and refuse the connection)."""
        return [sent for sent in host.push(*args, **kwargs) if sent.url == hook_url]

    before, after = commit(config_repo, "fresh")
    started = time.monotonic()
    [delivery] = push("refs/heads/master", before, after)
    assert delivery.status_code == 202, delivery.response
    assert '"queued"' in delivery.response and delivery.seconds < 0.5  # answered before any sync
    wait_for(lambda: "fresh" in stripped(sesam.entities()), what=f"{host.name} push applied")
    latency = time.monotonic() - started
    LATENCIES.setdefault(host.name, []).append(latency)
    assert latency < 5
    wait_for(lambda: host.success in host.states(after), what=f"{host.success} status on the {host.name} emulator")
    assert sesam.put_count == puts + 1

    replay = httpx.post(hook_url, content=delivery.body, headers=delivery.headers)
    assert replay.status_code == 200 and "duplicate" in replay.text

    before, never = commit(config_repo, "never")
    for tamper in ("wrong", "empty", "missing"):
        [refused] = push("refs/heads/master", before, never, tamper=tamper)
        assert refused.status_code == 401, (tamper, refused.response)
    [other_repo] = push("refs/heads/master", before, never, repository_path=_other(host.path))
    assert other_repo.status_code == 202 and "ignored" in other_repo.response, other_repo.response
    assert "follows" in other_repo.response
    [other_branch] = push("refs/heads/feature", before, never)
    assert other_branch.status_code == 202 and "ignored" in other_branch.response, other_branch.response
    time.sleep(1.0)
    assert "never" not in stripped(sesam.entities()) and sesam.put_count == puts + 1
    assert [r["result"] for r in history_rows(state_dir) if r["trigger"] == "webhook"] == ["synced"]

    removed = run_cli(env, "hooks", "remove")
    assert removed.returncode == 0 and "removed hook" in removed.stdout, removed.stdout + removed.stderr
    assert hook_url not in host.hook_urls()
    log = svc.log()
    assert "webhook delivery" in log and "unauthorized" in log
    for secret in ALL_SECRETS:
        assert secret not in log, "a secret reached the service's log"


def _other(path: str) -> str:
    owner, _, _ = path.rpartition("/")
    return f"{owner}/other"


def pytest_terminal_summary(terminalreporter: Any) -> None:  # pragma: no cover - reporting only
    for name, values in LATENCIES.items():
        terminalreporter.write_line(f"push->synced {name}: " + ", ".join(f"{v * 1000:.0f} ms" for v in values))

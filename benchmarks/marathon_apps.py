"""Scenario 6: fifty Marathon apps in Git, one changed: exactly one PUT, and how long until verified.

``autodeployer run`` (TARGET=marathon) follows ``specs/*.json`` (one app per file) with its webhook
registered on the GitHub emulator. Each round changes one app's spec, pushes and delivers the push.
The clock stops when the service posts the ``success`` commit status for the pushed commit, which it
does after the deployment left ``/v2/deployments``, the task counts were checked and the read-back
found nothing left to change (and the sync was recorded).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.marathon import MarathonEmulator

from .core import Options, ScenarioResult, Summary, Table, count, fmt_summary, wait_until
from .fixtures import Hookshot, ServerProcess, webhook_service

APPS = 50
MARATHON_TOKEN = "bench-marathon-token-0001"
DEPLOY_SECONDS = 0.2  # how long the emulator takes to finish a deployment (its default)
SPACING = 0.6  # past the scheduler's settle window after the previous sync


def app_spec(n: int, instances: int = 1) -> dict[str, Any]:
    return {"id": f"/app-{n:02d}", "cmd": f"serve --port $PORT0 --name app-{n:02d}", "instances": instances,
            "cpus": 0.1, "mem": 64, "env": {"MODE": "prod"}}


def spec_file(n: int, instances: int = 1) -> tuple[str, bytes]:
    return f"specs/app-{n:02d}.json", (json.dumps(app_spec(n, instances), indent=2) + "\n").encode()


@dataclass
class Round:
    puts: list[str]
    writes: int  # PUT, POST, PATCH and DELETE requests of any kind
    applied: float  # delivery to the changed spec stored by Marathon
    verified: float  # delivery to the `success` commit status


def one_round(work: WorkRepo, mara: MarathonEmulator, github: GitHubEmulator, hookshot: Hookshot, n: int,
              instances: int) -> Round:
    before = work.head
    path, data = spec_file(n, instances)
    work.write({path: data})
    after = work.commit(f"scale app-{n:02d} to {instances}")
    work.push()
    mara.reset_log()
    body = hookshot.payload(before, after)
    start = time.perf_counter()
    if hookshot.deliver(body) != 202:
        raise AssertionError("the webhook was not accepted")
    app_id = f"/app-{n:02d}"
    wait_until(lambda: mara.apps()[app_id]["instances"] == instances, 30, interval=0.002, what=f"{app_id} updated")
    applied = time.perf_counter() - start
    wait_until(lambda: succeeded(github, after), 60, interval=0.002, what="the success commit status")
    verified = time.perf_counter() - start
    requests = mara.requests
    puts = [r.path for r in requests if r.method == "PUT"]
    writes = sum(r.method in ("PUT", "POST", "PATCH", "DELETE") for r in requests)
    return Round(puts, writes, applied, verified)


def succeeded(github: GitHubEmulator, sha: str) -> bool:
    return any(s["state"] == "success" for s in github.statuses("acme", "config", sha))


def run(options: Options) -> ScenarioResult:
    result = ScenarioResult("marathon", "6. Marathon")
    rounds_wanted = options.pick(20, 5)
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="bench-marathon-") as tmp:
        root = Path(tmp)
        bare = root / "git" / "acme" / "config.git"
        WorkRepo.generate(bare, 1, APPS, spec_file)
        work = WorkRepo.create(bare, root / "work")
        mara = MarathonEmulator(token=MARATHON_TOKEN, deploy_duration=DEPLOY_SECONDS)
        server = mara.serve()
        try:
            with ServerProcess.git(root / "git") as git:
                target = {"TARGET": "marathon", "MARATHON_URL": server.url, "MARATHON_TOKEN": MARATHON_TOKEN}
                with webhook_service(git.url_for("acme/config.git"), target, root, "marathon",
                                     bare) as (hookshot, github):
                    if len(mara.apps()) != APPS:
                        raise AssertionError(f"start-up sync deployed {len(mara.apps())} apps, not {APPS}")
                    for r in range(rounds_wanted):
                        rounds.append(one_round(work, mara, github, hookshot, n=(7 * r) % APPS, instances=2 + r))
                        time.sleep(SPACING)
        finally:
            server.stop()
    report(result, rounds)
    return result


def report(result: ScenarioResult, rounds: list[Round]) -> None:
    exact = sum(len(r.puts) == 1 and r.writes == 1 for r in rounds)
    table = Table(f"{len(rounds)} rounds, each changing one of {APPS} apps (median (min–max))",
                  ["Rounds", "PUTs per round", "Rounds with exactly one write", "Push → spec stored",
                   "Push → verified sync"])
    table.add(len(rounds), fmt_summary(Summary.of(len(r.puts) for r in rounds), count), f"{exact} of {len(rounds)}",
              fmt_summary(Summary.of(r.applied for r in rounds)), fmt_summary(Summary.of(r.verified for r in rounds)))
    result.tables.append(table)
    result.check(f"exactly 1 PUT when 1 of {APPS} apps changes", f"{exact} of {len(rounds)} rounds",
                 exact == len(rounds))
    result.notes += [
        "Each round edits `instances` in one `specs/app-NN.json`, pushes and delivers the signed webhook. "
        "Writes are counted by the Marathon emulator (PUT, POST, PATCH, DELETE); the one PUT is "
        "`/v2/apps/app-NN?partialUpdate=false`.",
        f"Verified: the service posted the `success` commit status for the pushed commit, which it does after "
        f"following the deployment to its end, checking the task counts, reading back and recording. The "
        f"emulator takes {DEPLOY_SECONDS:g} s to finish a deployment (its default), included in the figure; a "
        "real Marathon takes as long as the tasks need to start.",
    ]

"""Scenario 9: from a push to a pull request's branch to its preview comment updated on GitHub.

``autodeployer run`` (PREVIEWS=true) is a real process; the GitHub and Sesam emulators run in this
process. The configuration has 1,000 entities and is live on the node. Each push is one commit on the
PR's branch changing one pipe; the clock starts when the emulator sends the signed ``synchronize``
delivery and stops when the PR's one preview comment names the new head (the comment is read in
process every 5 ms, without HTTP).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from autodeployer.previews import MIN_INTERVAL, marker
from autodeployer_emulators.github import GitHubEmulator
from autodeployer_emulators.sesam import SesamEmulator

from .core import Options, ScenarioResult, Summary, Table, fmt_summary, ms, percentile, wait_until
from .fixtures import (
    GIT_TOKEN,
    SESAM_JWT,
    WEBHOOK_SECRET,
    ConfigRepo,
    ServerProcess,
    Service,
    app_env,
    entity,
    entity_file,
    entity_path,
    free_port,
    pipe_number,
    sesam_vars,
)

SIZE = 1_000
LARGE = 500  # files changed by the one large push
SPACING = MIN_INTERVAL + 0.1  # previews are rate-limited per PR: pushes closer than this are coalesced
TIMEOUT = 20.0


def comment_names(github: GitHubEmulator, head: str) -> bool:
    found = [c for c in github.comments("acme", "config", 1) if marker("node") in c.body]
    return len(found) == 1 and head[:12] in found[0].body


def run(options: Options) -> ScenarioResult:
    result = ScenarioResult("previews", "9. Pull-request previews")
    pushes = options.pick(30, 5)
    with tempfile.TemporaryDirectory(prefix="bench-previews-") as tmp:
        work = Path(tmp)
        repo = ConfigRepo(work / "git", work / "work", SIZE)
        node = SesamEmulator(jwt=SESAM_JWT)
        node.load(list(repo.expected.values()))
        github = GitHubEmulator(token=GIT_TOKEN)
        github.add_repo("acme", "config", repo_id=4242, default_branch="master", git_dir=repo.bare)
        port = free_port()
        with ServerProcess.git(work / "git") as git, node.serve() as sesam, github.serve() as gh:
            env = app_env(git.url_for("acme/config.git"), work / "state", SYNC_INTERVAL="3600",
                          GITHUB_API_URL=gh.url, WEBHOOK_SECRET=WEBHOOK_SECRET, HEAD_CHECK="git", PREVIEWS="true",
                          PUBLIC_URL=f"http://127.0.0.1:{port}", PORT=str(port), **sesam_vars(sesam.url + "/api"))
            with Service.start(env, work / "service.log") as service:
                wait_until(service.ready, 120, what="start-up sync")
                wait_until(lambda: any("pull_request" in h["events"] for h in github.hooks("acme", "config")),
                           30, what="hook registration")
                latencies, planned = measure(repo, github, gh.url, service, pushes)
                large = large_push(repo, github, service, LARGE)
                puts = sum(1 for r in node.requests if r.method == "PUT")
    report(result, latencies, planned, pushes, puts, large)
    return result


def measure(repo: ConfigRepo, github: GitHubEmulator, api: str, service: Service,
            pushes: int) -> tuple[list[float], list[float]]:
    """Open the PR, then push `pushes` one-pipe commits to it; seconds to each comment update, and the
    plan durations the service reported."""
    repo.work.git("checkout", "-q", "-b", "feature")
    first = repo.commit_change(0)
    repo.work.push("feature")
    answer = httpx.post(f"{api}/repos/acme/config/pulls",
                        json={"title": "bench", "head": "feature", "base": "master"},
                        headers={"Authorization": f"Bearer {GIT_TOKEN}"}, timeout=10)
    answer.raise_for_status()
    wait_until(lambda: comment_names(github, first.after), TIMEOUT, interval=0.005, what="first preview comment")
    latencies: list[float] = []
    for k in range(1, pushes + 1):
        time.sleep(SPACING)
        change = repo.commit_change(k)
        repo.work.push("feature")
        start = time.perf_counter()
        github.pull_pushed("acme", "config", 1)
        wait_until(lambda head=change.after: comment_names(github, head), TIMEOUT, interval=0.005,
                   what=f"comment for push {k}")
        latencies.append(time.perf_counter() - start)
    previews = httpx.get(service.url + "/api/apps/node/previews", timeout=10).json()["previews"]
    planned = [p["duration"] for p in previews if p.get("duration") is not None]
    return latencies, planned


def large_push(repo: ConfigRepo, github: GitHubEmulator, service: Service, files: int) -> tuple[float, float, str]:
    """One push changing `files` pipes of the PR: seconds to the comment updated, the plan's own duration
    as the service measured it, and the preview's summary."""
    time.sleep(SPACING)
    changed = [entity(pipe_number(repo.size, 5000 + k), rev=10_000 + k) for k in range(files)]
    repo.work.write({entity_path(e): entity_file(e) for e in changed})
    head = repo.work.commit(f"change {files} pipes")
    repo.work.push("feature")
    start = time.perf_counter()
    github.pull_pushed("acme", "config", 1)
    wait_until(lambda: comment_names(github, head), TIMEOUT, interval=0.005, what=f"comment for {files} files")
    elapsed = time.perf_counter() - start
    [preview] = httpx.get(service.url + "/api/apps/node/previews", timeout=10).json()["previews"]
    return elapsed, float(preview["duration"]), str(preview["summary"])


def report(result: ScenarioResult, latencies: list[float], planned: list[float], pushes: int, puts: int,
           large: tuple[float, float, str]) -> None:
    table = Table(f"{pushes} pushes to one pull request, one commit changing one pipe of {SIZE:,} entities",
                  ["Pushes", "p50 to comment updated", "p99 to comment updated", "min – max"])
    s = Summary.of(latencies)
    table.add(len(latencies), ms(percentile(latencies, 50)), ms(percentile(latencies, 99)),
              f"{ms(s.low)} – {ms(s.high)}")
    result.tables.append(table)
    big = Table(f"One push changing {LARGE} pipe files of the PR ({SIZE:,} entities)",
                ["Files changed", "to comment updated", "plan alone", "plan summary"])
    big.add(LARGE, ms(large[0]), ms(large[1]), large[2])
    result.tables.append(big)
    result.check(f"a PR changing {LARGE} files planned and commented within 2 s", ms(large[0]), large[0] < 2.0)
    p99 = percentile(latencies, 99)
    result.check("p99 push to comment updated under 2 s", ms(p99), p99 < 2.0 and len(latencies) == pushes)
    result.check("previews write nothing to the target", f"{puts} PUT(s) after start-up", puts == 0)
    result.notes += [
        "Clock: from the emulator sending the signed `synchronize` delivery (after `git push` of the PR's "
        "branch returned) until the PR's one comment carrying the marker names the new head. In between: the "
        "delivery's verification, `GET /pulls/1`, the fetch of `refs/pull/1/merge`, reading the tree, the "
        "node's `GET /config` of 1,000 entities, the diff, the comment `PATCH` and the plan status.",
        f"Pushes are spaced by {SPACING:g} s: previews are rate-limited to one plan per PR every "
        f"{MIN_INTERVAL:g} s (pushes inside that window are coalesced, the newest head wins).",
        f"The last plan's own duration as the service measured it: "
        f"{fmt_summary(Summary.of(planned)) if planned else '-'}.",
    ]

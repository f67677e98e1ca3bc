"""Scenario 1: what one idle poll costs, autodeployer against the seed's clone-and-compare.

The seed cloned the branch afresh every cycle and compared the files one by one (``filecmp``) with
the configuration it had; autodeployer asks the server for the branch head (one protocol-v2
``ls-refs`` request) and stops there when the head is already synced. Both run side by side against
the same Git server process, so the server's own work is not charged to either client.
"""

from __future__ import annotations

import asyncio
import filecmp
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from autodeployer.config.loader import AppConfig, Config, Policy, ServiceSettings
from autodeployer.logs import configure_logging
from autodeployer.model import Result, Trigger
from autodeployer.runtime import Runtime, build_runtime
from autodeployer.sources.spec import SourceSpec
from autodeployer.targets import sesam
from autodeployer_emulators.gitserver import WorkRepo, basic_auth_header, extra_header_env, git_env

from .core import (
    CpuSample,
    Options,
    ScenarioResult,
    Summary,
    Table,
    fmt_summary,
    human_bytes,
    ms,
    ratio,
    wait_until,
)
from .fixtures import GIT_TOKEN, SESAM_JWT, ServerProcess, child_env, config_file, entities, free_port, stop_process

COMMITS, FILES = 2_000, 5_000
REPO = "acme/config.git"


BATCH = 5  # /proc counts the server's CPU in 10 ms ticks: per-cycle figures come from batches


@dataclass
class Sample:
    wall: float
    cpu: float  # this process (all threads) and its waited-for children
    git_bytes: int


@dataclass
class Row:
    label: str
    samples: list[Sample]
    server_cpu: list[float]  # per-cycle mean of each batch: the Git server process, git children included

    def summary(self, attr: str) -> Summary:
        if attr == "server_cpu":
            return Summary.of(self.server_cpu)
        return Summary.of(getattr(s, attr) for s in self.samples)


async def measure(action: Callable[[], Awaitable[None]], git: ServerProcess) -> Sample:
    """One timed cycle; the server's byte counter is read before and after, outside the timing."""
    bytes_before = git.bytes_sent()
    start = CpuSample.now()
    await action()
    wall, cpu = CpuSample.now().since(start)
    return Sample(wall, cpu, git.bytes_sent() - bytes_before)


async def measure_batches(
    cycle: Callable[[int], Awaitable[None]], git: ServerProcess, runs: int, batch: int
) -> tuple[list[Sample], list[float]]:
    """``runs`` timed cycles; the server's CPU is read once per ``batch`` cycles."""
    samples: list[Sample] = []
    server: list[float] = []
    for first in range(0, runs, batch):
        size = min(batch, runs - first)
        before = git.cpu_seconds()
        for i in range(first, first + size):
            samples.append(await measure(lambda i=i: cycle(i), git))
        server.append((git.cpu_seconds() - before) / size)
    return samples, server


# --------------------------------------------------------------------------- the old way
def trees_equal(left: Path, right: Path) -> bool:
    """The seed's comparison: dircmp for names, then every common file compared byte for byte."""
    cmp = filecmp.dircmp(left, right, ignore=[".git"])
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(trees_equal(left / d, right / d) for d in cmp.common_dirs)


def clone(url: str, dest: Path) -> None:
    env = {**git_env(), **extra_header_env(basic_auth_header(GIT_TOKEN))}
    subprocess.run(["git", "clone", "--quiet", "--branch", "master", url, str(dest)], env=env, check=True,
                   timeout=300)


def old_cycle(url: str, work: Path, reference: Path, index: int) -> None:
    dest = work / f"clone-{index}"
    clone(url, dest)
    try:
        if not trees_equal(dest, reference):
            raise AssertionError("the fresh clone differs from the reference copy")
    finally:
        shutil.rmtree(dest)


# --------------------------------------------------------------------------- autodeployer
def app(name: str, git_url: str, sesam_api: str, drift_interval: float | None, github_api: str | None = None
        ) -> AppConfig:
    """`github_api`: read the head through GitHub's API (sha media type, ETag) instead of `ls-refs`."""
    api = {"github_api_url": github_api, "head_check": "api"} if github_api else {}
    return AppConfig(
        name=name,
        source=SourceSpec(url=git_url, branch="master", token=SecretStr(GIT_TOKEN), repo_full_name="acme/config",
                          **api),  # type: ignore[arg-type]
        target=sesam.Spec(api_url=sesam_api, jwt=SecretStr(SESAM_JWT)),
        policy=Policy(interval=60, drift_interval=drift_interval),
    )


async def idle_cycles(runtime: Runtime, name: str, label: str, runs: int, git: ServerProcess, expect: str,
                      warmed: Callable[[], None] | None = None) -> Row:
    """`warmed` is called after the warm-up sync, before the idle polls."""
    reconciler = runtime.reconcilers[name]
    first = await reconciler.sync(Trigger.MANUAL)  # warms the mirror; the node already holds the config
    if first.result is not Result.NO_CHANGE:
        raise AssertionError(f"{name}: warm-up sync gave {first.result.value}: {first.error or first.summary}")
    if warmed is not None:
        warmed()

    async def cycle(i: int) -> None:
        result = await reconciler.sync(Trigger.POLL)
        if result.summary != expect:
            raise AssertionError(f"{name}: idle cycle said {result.summary!r}, expected {expect!r}")

    for i in range(3):  # unmeasured: the first head check learns the protocol and opens the connection
        await cycle(i)
    samples, server = await measure_batches(cycle, git, runs, BATCH)
    return Row(label, samples, server)


@dataclass
class RateCost:
    """What idle polls through GitHub's API cost against its rate limit (counted by the emulator)."""

    cycles: int
    used: int  # requests charged to the rate limit during the measured cycles
    not_modified: int  # head checks answered 304 (free)


@contextmanager
def github_process(git_dir: Path) -> Iterator[str]:
    """The GitHub emulator as a process of its own (its CPU is not the client's); yields its API URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autodeployer_emulators.github", "--port", str(port), "--repo", "acme/config:master",
         "--git-dir", f"acme/config={git_dir}"],
        env=child_env(GITHUB_EMULATOR_TOKEN=GIT_TOKEN), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: rate_used(url) is not None, 30, interval=0.1, what="the GitHub emulator")
        yield url
    finally:
        stop_process(proc)


def rate_used(url: str) -> int | None:
    """Requests charged to the token's core rate limit so far (`/rate_limit` itself is free)."""
    try:
        response = httpx.get(url + "/rate_limit", headers={"Authorization": f"token {GIT_TOKEN}"}, timeout=5,
                             trust_env=False)
    except httpx.HTTPError:
        return None
    return int(response.json()["rate"]["used"]) if response.status_code == 200 else None


async def run_autodeployer(work: Path, git: ServerProcess, node: ServerProcess, runs: int,
                           drift_runs: int, github_api: str) -> tuple[list[Row], RateCost]:
    git_url, api = git.url_for(REPO), node.url + "/api"
    config = Config(
        service=ServiceSettings(state_dir=work / "state", commit_status=False, log_level="warning"),
        apps=[app("idle", git_url, api, drift_interval=0), app("drift", git_url, api, drift_interval=0.001),
              app("api", git_url, api, drift_interval=0, github_api=github_api)],
    )
    configure_logging("warning")
    observed: list[tuple[str, str]] = []
    runtime = build_runtime(config, git_observer=lambda kind, result, _s: observed.append((kind, result)))
    try:
        rows = [
            await idle_cycles(runtime, "idle", "autodeployer: head check (DRIFT_INTERVAL=0)", runs, git,
                              "head unchanged"),
            await idle_cycles(runtime, "drift", "autodeployer: head check + drift check", drift_runs,
                              git, "no drift"),
        ]
        before = [0]

        def warmed() -> None:  # the warm-up sync's first check (no ETag yet) is charged; count from here
            before[0] = rate_used(github_api) or 0
            observed.clear()

        rows.append(await idle_cycles(runtime, "api", "autodeployer: head check through GitHub's API (ETag)", runs,
                                      git, "head unchanged", warmed))
        polls = runs + 3  # idle_cycles' unmeasured first three and the measured ones
        cost = RateCost(polls, (rate_used(github_api) or 0) - before[0], observed.count(("api-head", "not-modified")))
        return rows, cost
    finally:
        await runtime.aclose()


async def run_old(work: Path, git: ServerProcess, runs: int) -> Row:
    url = git.url_for(REPO)
    reference = work / "reference"
    await asyncio.to_thread(clone, url, reference)
    samples, server = await measure_batches(
        lambda i: asyncio.to_thread(old_cycle, url, work, reference, i), git, runs, batch=1
    )
    return Row("old: git clone + filecmp of every file", samples, server)


def load_node(node: ServerProcess, count: int) -> None:
    response = httpx.put(node.url + "/api/config", json=entities(count), timeout=120, trust_env=False,
                         headers={"Authorization": f"Bearer {SESAM_JWT}"})
    response.raise_for_status()


# --------------------------------------------------------------------------- the scenario
def run(options: Options) -> ScenarioResult:
    result = ScenarioResult("idle", "1. Idle poll cost")
    runs, drift_runs, old_runs = options.pick((50, 15, 5), (10, 5, 2))
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        work = Path(tmp)
        WorkRepo.generate(work / "git" / REPO, COMMITS, FILES, config_file)
        with ServerProcess.git(work / "git") as git, ServerProcess.sesam() as node, \
                github_process(work / "git" / REPO) as github_api:
            load_node(node, FILES)
            rows, cost = asyncio.run(run_autodeployer(work, git, node, runs, drift_runs, github_api))
            # the old way second: its clones must not warm caches the idle cycles then benefit from
            old = asyncio.run(run_old(work, git, old_runs))
    report(result, rows, old, cost)
    return result


def report(result: ScenarioResult, rows: list[Row], old: Row, cost: RateCost) -> None:
    table = Table(
        f"One idle cycle, repository of {COMMITS:,} commits and {FILES:,} config files "
        "(median (min–max))",
        ["Approach", "Cycles", "Wall time", "CPU time (incl. children)", "Git server CPU", "Bytes from Git server",
         "Old ÷ this: wall, CPU, bytes"],
    )
    medians = {attr: old.summary(attr).median for attr in ("wall", "cpu", "git_bytes")}
    for row in [*rows, old]:
        wall = row.summary("wall")
        ratios = ", ".join(ratio(medians[a] / row.summary(a).median) if row.summary(a).median else "∞"
                           for a in ("wall", "cpu", "git_bytes"))
        table.add(row.label, wall.n, fmt_summary(wall), fmt_summary(row.summary("cpu")),
                  fmt_summary(row.summary("server_cpu")), fmt_summary(row.summary("git_bytes"), human_bytes),
                  ratios if row is not old else "1×")
    result.tables.append(table)
    old_wall = medians["wall"]
    idle, drift, _api = rows
    idle_wall = idle.summary("wall").median
    result.check("idle cycle ≥ 100× cheaper than clone + compare (wall time)",
                 f"{ratio(old_wall / idle_wall)} ({ms(idle_wall)} vs {ms(old_wall)})", old_wall / idle_wall >= 100)
    result.check("idle cycle under 50 ms", ms(idle_wall), idle_wall < 0.05)
    idle_cpu = idle.summary("cpu").median
    result.check("idle cycle ≥ 1,000× cheaper than clone + compare in CPU (incl. children)",
                 f"{ratio(medians['cpu'] / idle_cpu)} ({ms(idle_cpu)} vs {ms(medians['cpu'])})",
                 medians["cpu"] / idle_cpu >= 1000)
    drift_wall = drift.summary("wall").median
    rate = Table("Idle polls through GitHub's API: cost against the rate limit (counted by the GitHub emulator)",
                 ["Idle polls", "Answered 304 Not Modified", "Charged to the rate limit", "Per idle poll"])
    rate.add(cost.cycles, cost.not_modified, cost.used, f"{cost.used / max(1, cost.cycles):g}")
    result.tables.append(rate)
    result.check("idle poll through GitHub's API costs nothing against the rate limit (ETag)",
                 f"{cost.used} of {cost.cycles} idle polls charged ({cost.not_modified} answered 304)",
                 cost.used == 0 and cost.not_modified == cost.cycles)
    result.notes += [
        "GitHub's API row: the same idle cycle with `head_check: api`, the branch head read with the sha media type "
        "and `If-None-Match` of the last answer's ETag; the GitHub emulator (a process of its own) answers 304 "
        "while the branch is unchanged and charges only non-304 answers to the rate limit, as GitHub does. "
        "Charged requests are read from its `/rate_limit` (free) before and after the cycles; the warm-up sync "
        "before them learns the ETag with one charged request.",
        "The idle cycle is `Reconciler.sync(Trigger.POLL)` on an app whose head is already synced, built "
        "in-process with `build_runtime`; it is one protocol-v2 `ls-refs` POST on a kept-alive connection. "
        "With a drift check (by default at most once a minute) it also reads the live configuration "
        "(`GET /config`, 5,000 entities) from the Sesam emulator and diffs it with the desired state: "
        f"{ms(drift_wall)}, "
        f"{ratio(old_wall / drift_wall)} cheaper (that includes the emulator's own time to render its answer).",
        "The old way is what the seed did every minute: `git clone --branch master` of the whole history over "
        "the same smart-HTTP server, then a recursive `filecmp.dircmp` + `cmpfiles(shallow=False)` against a "
        "local copy, then removing the clone. It does not include the node download the seed also did, so "
        "it flatters the old way.",
        "CPU time is `getrusage(RUSAGE_SELF)` + `RUSAGE_CHILDREN` deltas of the benchmark process (git "
        "children included); the Git server runs in its own process, whose CPU (fields 14–17 of "
        f"/proc/<pid>/stat, `git http-backend` included) is shown apart, as the mean per cycle of batches of "
        f"{BATCH} cycles (/proc counts in 10 ms ticks). Bytes are response bodies counted by `GitHttpServer`.",
    ]

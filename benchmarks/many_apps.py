"""Scenario 5: one ``autodeployer run`` process serving 200 apps, each polled every 10 s.

The hard case: 200 different repositories on one Git server, each app with its own Sesam node (200
emulators behind one loopback server, one URL prefix each). The service gets a YAML file, as a
many-app deployment would. After all apps have synced once and one more poll interval has passed,
the process is observed for the measurement window: CPU (utime+stime of the process and its reaped
children, from /proc), RSS (VmRSS sampled every second) and, from the Git server's request log,
the time between consecutive head checks (``ls-refs``) of each repository.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections import defaultdict
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .core import (
    Options,
    ScenarioResult,
    Summary,
    Table,
    count,
    fmt_summary,
    mb,
    proc_cpu_seconds,
    proc_rss_bytes,
    wait_until,
)
from .fixtures import GIT_TOKEN, HEALTH_WINDOW, SESAM_JWT, ServerProcess, Service, child_env, config_file, entities

APPS = 200
ENTITIES = 20  # per app: 18 pipes and 2 systems
INTERVAL = 10.0
LATE = 11.5  # 10 s + 10 % jitter + a sync's own duration stays below this


class NodeRouter:
    """ASGI: ``/n<i>/api/...`` goes to node ``i`` with the prefix stripped, so each emulator sees its
    usual paths. Lifespan is answered here; the emulators need none."""

    def __init__(self, nodes: list[SesamEmulator]) -> None:
        self.nodes = nodes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        prefix, _, rest = scope["path"].lstrip("/").partition("/")
        index = int(prefix[1:]) if prefix.startswith("n") and prefix[1:].isdigit() else -1
        if not 0 <= index < len(self.nodes):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        path = "/" + rest
        await self.nodes[index].app({**scope, "path": path, "raw_path": path.encode()}, receive, send)


@dataclass
class Window:
    """What was observed while the service ran in steady state."""

    label: str
    seconds: float
    cpu_seconds: float
    cpu_shares: list[float]  # per poll interval of the window
    rss_samples: list[int]
    intervals: list[float]  # between consecutive head checks of one repository
    late: int
    head_checks: int
    other_requests: int


def write_config(path: Path, state: Path, git: ServerProcess, nodes_url: str, drift_interval: float | None) -> None:
    policy: dict[str, Any] = {"interval": INTERVAL, "health_window": HEALTH_WINDOW}
    if drift_interval is not None:
        policy["drift_interval"] = drift_interval
    apps = [
        {
            "name": f"app{i:03d}",
            "source": {"url": git.url_for(f"team{i:03d}/config.git"), "branch": "master", "token_env": "GITHUB_TOKEN"},
            "target": {"kind": "sesam", "api_url": f"{nodes_url}/n{i:03d}/api", "jwt_env": "JWT"},
            "policy": policy,
        }
        for i in range(APPS)
    ]
    path.write_text(yaml.safe_dump({"service": {"state_dir": str(state)}, "apps": apps}, sort_keys=False))


def observe(service: Service, git: ServerProcess, label: str, seconds: float) -> Window:
    """Sample the service every second for ``seconds``; then read the Git server's request log."""
    pid = service.proc.pid
    first_request = git.stats(since=1 << 62)["requests"]
    start_wall, start_cpu = time.monotonic(), proc_cpu_seconds(pid)
    rss: list[int] = []
    shares: list[float] = []
    block_wall, block_cpu = start_wall, start_cpu
    while (now := time.monotonic()) - start_wall < seconds:
        rss.append(proc_rss_bytes(pid))
        if now - block_wall >= INTERVAL:
            cpu = proc_cpu_seconds(pid)
            shares.append((cpu - block_cpu) / (now - block_wall))
            block_wall, block_cpu = now, cpu
        time.sleep(min(1.0, max(0.0, seconds - (now - start_wall))))
    end_wall, end_cpu = time.monotonic(), proc_cpu_seconds(pid)
    log = git.stats(since=first_request)["log"]
    checks: dict[str, list[float]] = defaultdict(list)
    other = 0
    for at, _method, path, kind in log:
        if kind == "ls-refs" and start_wall <= at <= end_wall:
            checks[path].append(at)
        elif start_wall <= at <= end_wall:
            other += 1
    intervals, late = lateness(checks, start_wall, end_wall)
    return Window(label, end_wall - start_wall, end_cpu - start_cpu, shares, rss, intervals, late,
                  sum(len(v) for v in checks.values()), other)


def lateness(checks: dict[str, list[float]], start: float, end: float) -> tuple[list[float], int]:
    """Intervals between head checks, and how many exceeded LATE (a repository that went quiet for
    longer than LATE at either edge of the window, or never polled, counts as late too)."""
    intervals: list[float] = []
    late = 0
    for i in range(APPS):
        times = sorted(checks.get(f"/team{i:03d}/config.git/git-upload-pack", []))
        if not times:
            late += 1
            continue
        gaps = [b - a for a, b in itertools.pairwise(times)]
        intervals += gaps
        late += sum(g > LATE for g in gaps) + (times[0] - start > LATE) + (end - times[-1] > LATE)
    return intervals, late


def run_variant(work: Path, git: ServerProcess, nodes_url: str, label: str, drift_interval: float | None,
                seconds: float, warmup: float) -> Window:
    state, config = work / f"state-{label}", work / f"apps-{label}.yaml"
    write_config(config, state, git, nodes_url, drift_interval)
    env = child_env(GITHUB_TOKEN=GIT_TOKEN, JWT=SESAM_JWT, LOG_LEVEL="warning")
    with Service.start(env, work / f"service-{label}.log", "--config", str(config)) as service:
        wait_until(service.ready, 300, interval=0.5, what=f"the first sync of all {APPS} apps")
        time.sleep(max(warmup, HEALTH_WINDOW + 2.0))  # let the start-up burst give way to steady polling
        return observe(service, git, label, seconds)


def run(options: Options) -> ScenarioResult:
    result = ScenarioResult("many", "5. Many apps")
    warmup = options.pick(INTERVAL * 1.2, INTERVAL * 0.5)
    variants: list[tuple[str, float | None, float]] = options.pick(
        [("default (drift check at most once a minute)", None, 120.0),
         (f"drift check every poll (drift_interval: {INTERVAL:g})", INTERVAL, 60.0),
         ("head check only (drift_interval: 0)", 0.0, 60.0)],
        [("default (drift check at most once a minute)", None, 30.0)],
    )
    with tempfile.TemporaryDirectory(prefix="bench-many-") as tmp:
        work = Path(tmp)
        for i in range(APPS):
            WorkRepo.generate(work / "git" / f"team{i:03d}" / "config.git", 1, ENTITIES, config_file)
        nodes = [SesamEmulator(jwt=SESAM_JWT) for _ in range(APPS)]
        for node in nodes:
            node.load(entities(ENTITIES))
        server = LoopbackServer(NodeRouter(nodes)).start()
        try:
            with ServerProcess.git(work / "git") as git:
                windows = [run_variant(work, git, server.url, label, drift, seconds, warmup)
                           for label, drift, seconds in variants]
        finally:
            server.stop()
    report(result, windows)
    return result


MANY_ANALYSIS = [
    "Every poll of every app is at least one HTTP request (the `ls-refs` head check: fixed bytes on a kept-alive "
    "socket, sources/leanpost.py, no longer through httpx) and one read of the app's state from SQLite; once a "
    "minute by default (every poll with `drift_interval` equal to the poll interval) it is also a drift check: "
    "`GET /config` (through httpx), its decoding and the diff (the tree and the parsed desired state of an "
    "unchanged head are kept in memory, and a quiet drift check writes nothing); httpx's own work per request "
    "(building it, h11, anyio streams) is much of the drift check's client side.",
    "Late polls follow CPU starvation: the next poll is scheduled when a sync ends, so a sync slowed down by a "
    "busy machine pushes the interval past the limit.",
]


def report(result: ScenarioResult, windows: list[Window]) -> None:
    columns = ["Policy", "Observed", "CPU share of one core", f"per {INTERVAL:g} s", "RSS max (median)",
               "Head checks", "Interval between head checks", f"Late (> {LATE:g} s)"]
    table = Table(f"{APPS} apps ({APPS} repositories, {APPS} Sesam nodes of {ENTITIES} entities), polled every "
                  f"{INTERVAL:g} s", columns)
    for w in windows:
        rss = Summary.of(w.rss_samples)
        gaps = fmt_summary(Summary.of(w.intervals), lambda s: f"{s:.2f} s") if w.intervals else "-"
        per_block = fmt_summary(Summary.of(w.cpu_shares), lambda x: f"{100 * x:.1f} %") if w.cpu_shares else "-"
        table.add(w.label, f"{w.seconds:.0f} s", f"{100 * w.cpu_seconds / w.seconds:.1f} %", per_block,
                  f"{mb(rss.high)} ({mb(rss.median)})", count(w.head_checks), gaps,
                  f"{w.late:,} of {len(w.intervals):,}")
    result.tables.append(table)
    main = windows[0]
    share = main.cpu_seconds / main.seconds
    result.check(f"{APPS} apps every {INTERVAL:g} s: CPU under 15 % of one core", f"{100 * share:.1f} %", share < 0.15)
    peak = max(main.rss_samples)
    result.check(f"{APPS} apps: RSS under 300 MB", mb(peak), peak < 300e6)
    if not all(c.met for c in result.checks):
        result.analysis += MANY_ANALYSIS
    result.notes += [
        "CPU share: utime+stime+cutime+cstime (fields 14–17 of /proc/<pid>/stat) of the service over the window, "
        f"divided by the window's wall time, and the same for each {INTERVAL:g} s of it (median (min–max)); git "
        "processes the service started and reaped are included. The Git server and the Sesam emulators run in "
        "other processes and are not included.",
        f"Late polls are measured outside the service, from the Git server's request log: each repository's "
        f"head checks (protocol-v2 `ls-refs` requests) should come every {INTERVAL:g} s ± 10 % jitter plus the "
        f"duration of the sync; an interval over {LATE:g} s counts as late (as does a repository with no head "
        "check for that long at either edge of the window).",
        "The window starts once every app has finished its start-up sync and, in a full run, one more poll "
        "interval has passed (half of one with --quick).",
    ]

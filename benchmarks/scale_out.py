"""Scale-out: 300 apps polled every 10 s, on one replica and on three sharing a PostgreSQL database.

Everything is real and on loopback: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl`` in a
temporary directory), the Git server in its own process (``benchmarks.serve git``), 300 Sesam
emulators behind one loopback server (``/n<i>/api``), and ``autodeployer run`` replicas as processes.
Each app follows its own branch of one repository, so a push concerns exactly one app.

Measured, per configuration (1 replica with the default SQLite store, 1 replica on PostgreSQL,
3 replicas on PostgreSQL):

* CPU (utime+stime of the process and its reaped children, from /proc) and RSS of each replica over
  a steady-state window, after every app has synced once and the start-up burst has passed;
* push-to-synced latency: a signed webhook for one app's branch is sent (after ``git push`` returned)
  to a replica that does **not** own the app (with three replicas), and the clock stops when the
  pushed pipe is stored on that app's node; p50 and p99;
* with three replicas, take-over time after ``kill -9`` of one replica: from the kill until every
  app it owned is locked by a survivor (read from ``pg_locks``), median of 5; a fresh replica is
  started after each kill so every round starts from three.

Every figure is the median of repeated samples with min and max: CPU and RSS per poll interval of
the window, latency over the pushes, take-over over the kills. ``run(options)`` is the scenario of
``python -m benchmarks`` (``--only scaleout``); ``python -m benchmarks.scale_out [--quick]`` runs it
alone. ``--quick`` uses 60 apps, shorter windows and fewer repetitions.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.gitserver import WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from .core import (
    Options,
    ScenarioResult,
    Summary,
    Table,
    fmt_summary,
    mb,
    ms,
    percentile,
    proc_cpu_seconds,
    proc_rss_bytes,
    wait_until,
)
from .fixtures import (
    GIT_TOKEN,
    HEALTH_WINDOW,
    SESAM_JWT,
    WEBHOOK_SECRET,
    ServerProcess,
    Service,
    child_env,
    entities,
    entity_file,
    entity_path,
    free_port,
)
from .many_apps import NodeRouter

INTERVAL = 10.0
HEARTBEAT = 2.0
ENTITIES = 20
DB_USER = "autodeployer"
DB_PASSWORD = "bench-store-password-0001"


@dataclass
class Sizes:
    apps: int
    window: float  # steady-state window, cut into `sample`-second samples
    sample: float
    pushes: int  # per row of the latency table
    takeovers: int

    @classmethod
    def of(cls, options: Options) -> Sizes:
        # A sample of one poll interval holds one poll of every app: the samples are comparable.
        return cls(apps=options.pick(300, 60), window=options.pick(6 * INTERVAL, 15.0),
                   sample=options.pick(INTERVAL, 5.0), pushes=options.pick(40, 10), takeovers=options.pick(5, 3))


# --------------------------------------------------------------------------- PostgreSQL
class Postgres:
    """A throwaway cluster; as the ``postgres`` user when running as root (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, env=env, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed: {done.stderr or done.stdout}")

    def start(self) -> Postgres:
        pwfile = self.root / "pw"
        pwfile.write_text(DB_PASSWORD + "\n")
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(self.initdb, "-D", str(self.data), "-U", DB_USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "--encoding=UTF8", "--no-sync", "--no-instructions")
        pwfile.unlink()
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c fsync=off -c max_connections=200")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(self.url(db), password=DB_PASSWORD, autocommit=True)

    def create_database(self, name: str) -> str:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def cpu_seconds(self) -> float:
        """CPU of the postmaster and every backend alive now (exited backends are not counted)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        total = proc_cpu_seconds(pid)
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                raw = Path(stat).read_text()
            except OSError:
                continue
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
                total += proc_cpu_seconds(int(stat.split("/")[2]))
        return total

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise FileNotFoundError(f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)")
    return found


# --------------------------------------------------------------------------- the fleet
class Repo:
    """acme/config.git with one branch per app; commits to one branch at a time."""

    def __init__(self, root: Path, work: Path, apps: int) -> None:
        bare = root / "acme" / "config.git"
        self.work = WorkRepo.create(bare, work, branch="master")
        self.work.write({entity_path(e): entity_file(e) for e in entities(ENTITIES)})
        self.work.commit("initial configuration")
        self.work.push()
        self.tips: dict[str, str] = {}
        base = self.work.head
        refspecs = [f"{base}:refs/heads/{branch(i)}" for i in range(apps)]
        for start in range(0, len(refspecs), 100):
            self.work.git("push", "-q", "origin", *refspecs[start : start + 100])
        self.tips = {branch(i): base for i in range(apps)}

    def push(self, i: int, entity_id: str) -> str:
        name = branch(i)
        self.work.git("checkout", "-q", "-B", name, self.tips[name])
        self.work.write({f"pipes/{entity_id}.conf.json": json.dumps(
            {"_id": entity_id, "type": "pipe", "source": {"type": "dataset", "dataset": "raw-1"}}, indent=2) + "\n"})
        self.work.git("add", "-A")
        self.work.git("commit", "-q", "-m", f"add {entity_id}")
        self.work.git("push", "-q", "origin", f"HEAD:refs/heads/{name}")
        self.tips[name] = self.work.head
        return self.tips[name]


def branch(i: int) -> str:
    return f"b{i:03d}"


@dataclass
class Fleet:
    work: Path
    git: ServerProcess
    nodes: list[SesamEmulator]
    nodes_url: str
    store_url: str | None
    replicas: dict[str, Service] = field(default_factory=dict)
    started: int = 0
    branches: int | None = None  # apps share this many branches (app i follows branch i % branches); None: one each

    def config(self) -> Path:
        path = self.work / "apps.yaml"
        apps = [{
            "name": f"app{i:03d}",
            "source": {"url": self.git.url_for("acme/config.git"),
                       "branch": branch(i % self.branches if self.branches else i), "token_env": "GITHUB_TOKEN",
                       "head_check": "git"},
            "target": {"kind": "sesam", "api_url": f"{self.nodes_url}/n{i}/api", "jwt_env": "JWT"},
            "policy": {"interval": INTERVAL, "health_window": HEALTH_WINDOW},
        } for i in range(len(self.nodes))]
        path.write_text(yaml.safe_dump({"apps": apps}, sort_keys=False))
        return path

    def start(self, name: str) -> Service:
        self.started += 1
        env = child_env(GITHUB_TOKEN=GIT_TOKEN, JWT=SESAM_JWT, WEBHOOK_SECRET=WEBHOOK_SECRET, LOG_LEVEL="warning",
                        STATE_DIR=str(self.work / f"state-{name}"), REPLICA_ID=name, HEARTBEAT_INTERVAL=str(HEARTBEAT))
        if self.store_url:
            env |= {"STORE_URL": self.store_url, "STORE_PASSWORD": DB_PASSWORD}
        service = Service.start(env, self.work / f"{name}.log", "--config", str(self.config()))
        self.replicas[name] = service
        return service

    def kill(self, name: str) -> None:
        service = self.replicas.pop(name)
        os.killpg(service.proc.pid, signal.SIGKILL)
        service.proc.wait(10)

    def stop(self) -> None:
        for service in self.replicas.values():
            service.stop()
        self.replicas.clear()

    def owners(self, pg: Postgres) -> dict[str, str]:
        from autodeployer.store.postgres import SQL_OWNERS

        with pg.connect(self.store_url.rsplit("/", 1)[1]) as conn:  # type: ignore[union-attr]
            return dict(conn.execute(SQL_OWNERS).fetchall())

    def all_synced(self) -> bool:
        first = entities(ENTITIES)[0]["_id"]
        return all(node.audit(first) is not None for node in self.nodes)


# --------------------------------------------------------------------------- measurements
@dataclass
class Cost:
    label: str
    replicas: list[str]
    owned: list[int]  # apps owned by each replica at the end of the window
    cpu: list[list[float]]  # per replica, per sample: fraction of one core
    rss: list[list[int]]  # per replica, per sample: bytes at the end of the sample
    total: list[float]  # per sample: every replica together, fraction of one core
    pg_cpu: list[float]  # per sample: PostgreSQL (empty with SQLite), fraction of one core


@dataclass
class Latency:
    label: str
    samples: list[float]
    via: str  # where the webhook was sent: the only replica, the owner, a non-owner


def measure_cost(label: str, fleet: Fleet, sizes: Sizes, pg: Postgres | None) -> Cost:
    """CPU and RSS of each replica (and PostgreSQL) sampled every `sizes.sample` seconds of the window."""
    names = sorted(fleet.replicas)
    pids = [fleet.replicas[n].proc.pid for n in names]
    samples = max(1, round(sizes.window / sizes.sample))
    cpu: list[list[float]] = [[] for _ in pids]
    rss: list[list[int]] = [[] for _ in pids]
    pg_cpu: list[float] = []
    for _ in range(samples):
        cpu0 = [proc_cpu_seconds(p) for p in pids]
        pg0 = pg.cpu_seconds() if pg else 0.0
        start = time.monotonic()
        time.sleep(sizes.sample)
        wall = time.monotonic() - start
        for k, pid in enumerate(pids):
            cpu[k].append((proc_cpu_seconds(pid) - cpu0[k]) / wall)
            rss[k].append(proc_rss_bytes(pid))
        if pg:
            pg_cpu.append((pg.cpu_seconds() - pg0) / wall)
    if pg and len(names) > 1:
        owners = Counter(fleet.owners(pg).values())
        owned = [owners.get(n, 0) for n in names]
    else:
        owned = [len(fleet.nodes)] * len(names)
    total = [sum(c[i] for c in cpu) for i in range(samples)]
    return Cost(label, names, owned, cpu, rss, total, pg_cpu)


def signed_push(client: httpx.Client, url: str, i: int, sha: str) -> int:
    push = {"ref": f"refs/heads/{branch(i)}", "after": sha, "repository": {"full_name": "acme/config"}}
    body = json.dumps(push).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": f"bench-{i}-{sha[:12]}", "X-GitHub-Hook-ID": "1",
               "Content-Type": "application/json", "X-Hub-Signature-256": signature}
    return client.post(url + "/webhook", content=body, headers=headers).status_code


def measure_latency(label: str, fleet: Fleet, repo: Repo, pushes: int, pg: Postgres | None,
                    tag: str) -> list[Latency]:
    """One replica: every push through it. Several: pushes alternate between sending the webhook to
    the app's owner and to a replica that does not own it, so the forwarding cost is seen side by side."""
    several = pg is not None and len(fleet.replicas) > 1
    modes = ["a non-owner", "the owner"] if several else ["the only replica"]
    samples: dict[str, list[float]] = {m: [] for m in modes}
    apps = len(fleet.nodes)
    with httpx.Client(timeout=10, trust_env=False) as client:
        for k in range(pushes * len(modes)):
            mode = modes[k % len(modes)]
            i = (k * 7919) % apps
            names = sorted(fleet.replicas)
            sender = names[0]
            if several:
                owner = fleet.owners(pg).get(f"app{i:03d}")  # type: ignore[arg-type]
                others = [n for n in names if n != owner]
                sender = owner if mode == "the owner" and owner else others[k % len(others)]
            entity_id = f"push-{tag}-{k}"
            ref = i % fleet.branches if fleet.branches else i  # the branch app i follows
            sha = repo.push(ref, entity_id)
            node = fleet.nodes[i]
            start = time.perf_counter()
            status = signed_push(client, fleet.replicas[sender].url, ref, sha)
            if status != 202:
                raise RuntimeError(f"webhook answered {status}")
            deadline = start + 15
            while node.audit(entity_id) is None:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{entity_id} not on node {i} after 15 s")
                time.sleep(0.002)
            samples[mode].append(time.perf_counter() - start)
            time.sleep(0.4)
    return [Latency(label, samples[m], m) for m in modes]


def measure_takeovers(fleet: Fleet, pg: Postgres, rounds: int) -> list[float]:
    """Seconds from kill -9 until every app of the victim is locked by a survivor, polled every ~2 ms
    on one open connection."""
    from autodeployer.store.postgres import SQL_OWNERS

    times: list[float] = []
    with pg.connect(fleet.store_url.rsplit("/", 1)[1]) as conn:  # type: ignore[union-attr]
        def owners() -> dict[str, str]:
            return dict(conn.execute(SQL_OWNERS).fetchall())

        for r in range(rounds):
            before = owners()
            victim = sorted(fleet.replicas)[r % len(fleet.replicas)]
            orphans = [a for a, o in before.items() if o == victim]
            survivors = set(fleet.replicas) - {victim}
            start = time.perf_counter()
            fleet.kill(victim)
            while True:
                now = owners()
                if all(now.get(a) in survivors for a in orphans):
                    break
                if time.perf_counter() - start > 30:
                    raise TimeoutError(f"take-over of {len(orphans)} apps of {victim}: {Counter(now.values())}")
                time.sleep(0.002)
            times.append(time.perf_counter() - start)
            fleet.start(f"r{fleet.started + 1}")  # back to three replicas, evenly spread, for the next round
            names = set(fleet.replicas)
            wait_until(lambda names=names: set((o := owners()).values()) == names and len(o) == len(fleet.nodes),
                       60, interval=0.2, what="a rebalanced fleet")
            time.sleep(HEARTBEAT)
    return times


# --------------------------------------------------------------------------- the scenario
CONFIGS = [("1 replica, SQLite (default)", 1, False), ("1 replica, PostgreSQL", 1, True),
           ("3 replicas, PostgreSQL", 3, True)]
SINGLE, SINGLE_PG, THREE = (label for label, _, _ in CONFIGS)


def run(options: Options) -> ScenarioResult:
    result = ScenarioResult("scaleout", "7. Scale-out")
    _run(result, Sizes.of(options), CONFIGS)
    return result


#: Issue 18's fleet on three replicas: each under 12 % of one core, take-over within the same bound.
THOUSAND_LIMIT = 0.12


def run_thousand(options: Options) -> ScenarioResult:
    """1,000 apps (200 with --quick) on three replicas sharing PostgreSQL: CPU per replica and take-over."""
    sizes = Sizes(apps=options.pick(1000, 200), window=options.pick(6 * INTERVAL, 20.0),
                  sample=options.pick(INTERVAL, 5.0), pushes=options.pick(10, 4), takeovers=options.pick(3, 2))
    result = ScenarioResult("thousand3", "12. 1,000 apps on 3 replicas")
    # issue 18's fleet: 100 repositories' worth of refs, 10 apps following each (their head checks are shared)
    for cost in _run(result, sizes, [CONFIGS[2]], branches=options.pick(100, 20)):
        for name, cpu in zip(cost.replicas, cost.cpu, strict=True):
            summary = Summary.of(cpu)
            result.check(f"{sizes.apps} apps on 3 replicas: {name} under {THOUSAND_LIMIT:.0%} of one core",
                         f"{percent(summary.median)} (max {percent(summary.high)}), owns "
                         f"{cost.owned[cost.replicas.index(name)]}", summary.median < THOUSAND_LIMIT)
    return result


def _run(result: ScenarioResult, sizes: Sizes, configs: list[tuple[str, int, bool]],
         branches: int | None = None) -> list[Cost]:
    """Measure each configuration into `result`'s tables and checks; the costs, for a caller's own checks."""
    costs: list[Cost] = []
    latencies: list[Latency] = []
    takeovers: list[float] = []
    pg = Postgres().start()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    nodes = [SesamEmulator(jwt=SESAM_JWT) for _ in range(sizes.apps)]
    server = LoopbackServer(NodeRouter(nodes)).start()
    git = ServerProcess.git(work / "git")
    try:
        repo = Repo(work / "git", work / "repo", sizes.apps)
        for n, (label, replicas, shared) in enumerate(configs):
            for node in nodes:
                node.reset()
            url = pg.create_database(f"bench{n}") if shared else None
            fleet = Fleet(work / f"fleet{n}", git, nodes, server.url, url, branches=branches)
            fleet.work.mkdir()
            try:
                for r in range(replicas):
                    fleet.start(f"r{r + 1}")
                wait_until(fleet.all_synced, 600, interval=0.5, what=f"{label}: every app synced once")
                if replicas > 1:
                    wait_until(lambda fleet=fleet, replicas=replicas: len(set(fleet.owners(pg).values())) == replicas,
                               60, interval=0.2, what="apps spread over every replica")
                # the start-up burst (and the health watch of every app's first deploy) gives way to steady polling
                time.sleep(max(INTERVAL * 1.2, HEALTH_WINDOW + 2.0))
                costs.append(measure_cost(label, fleet, sizes, pg if shared else None))
                latencies += measure_latency(label, fleet, repo, sizes.pushes, pg if shared else None, str(n))
                if replicas > 1:
                    takeovers = measure_takeovers(fleet, pg, sizes.takeovers)
            finally:
                fleet.stop()
    except Exception as exc:  # report what was measured, and why the rest was not
        traceback.print_exc()
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    finally:
        git.stop()
        server.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(result, sizes, costs, latencies, takeovers)
    return costs


def percent(share: float) -> str:
    return f"{share * 100:.1f} %"


def report(result: ScenarioResult, sizes: Sizes, costs: list[Cost], latencies: list[Latency],
           takeovers: list[float]) -> None:
    samples = max(1, round(sizes.window / sizes.sample))
    per_replica = Table(
        f"Per replica: {sizes.apps} apps, {INTERVAL:g} s poll; {samples} samples of {sizes.sample:g} s "
        "(median (min–max))",
        ["Configuration", "Replica", "Apps owned", "CPU (% of one core)", "RSS"])
    totals = Table("Whole fleet over the same samples (median (min–max))",
                   ["Configuration", "All replicas CPU", "PostgreSQL CPU", "Sum"])
    for cost in costs:
        for name, owned, cpu, rss in zip(cost.replicas, cost.owned, cost.cpu, cost.rss, strict=True):
            per_replica.add(cost.label, name, owned,
                            fmt_summary(Summary.of(cpu), percent), fmt_summary(Summary.of(rss), mb))
        both = [t + p for t, p in zip(cost.total, cost.pg_cpu, strict=True)] if cost.pg_cpu else cost.total
        totals.add(cost.label, fmt_summary(Summary.of(cost.total), percent),
                   fmt_summary(Summary.of(cost.pg_cpu), percent) if cost.pg_cpu else "-",
                   fmt_summary(Summary.of(both), percent))
    latency = Table("Push-to-synced, one app's branch: signed webhook to the pushed pipe stored on the app's node",
                    ["Configuration", "Webhook sent to", "Pushes", "p50 (median)", "p99", "min", "max"])
    for lat in latencies:
        latency.add(lat.label, lat.via, len(lat.samples), ms(percentile(lat.samples, 50)),
                    ms(percentile(lat.samples, 99)), ms(min(lat.samples)), ms(max(lat.samples)))
    result.tables += [t for t in (per_replica, totals, latency) if t.rows]
    bound = max(5.0, 2 * HEARTBEAT)
    if takeovers:
        take = Table(f"Take-over after kill -9 of one of 3 replicas (HEARTBEAT_INTERVAL {HEARTBEAT:g} s): until "
                     "every app of the killed replica is locked by a survivor", ["Kills", "median (min–max)"])
        take.add(len(takeovers), fmt_summary(Summary.of(takeovers)))
        result.tables.append(take)
        summary = Summary.of(takeovers)
        result.check(f"take-over after kill -9 within max(5 s, 2 x heartbeat) = {bound:g} s",
                     f"median {ms(summary.median)}, max {ms(summary.high)} ({summary.n} kills)", summary.high <= bound)
    three_cost = next((c for c in costs if c.label == THREE), None)
    if three_cost:
        fair = -(-sizes.apps // len(three_cost.replicas)) + 1
        result.check(f"no replica owns more than ceil(apps / replicas) + 1 = {fair}",
                     "owned: " + ", ".join(f"{n} {o}"
                                          for n, o in zip(three_cost.replicas, three_cost.owned, strict=True)),
                     max(three_cost.owned) <= fair and sum(three_cost.owned) == sizes.apps)
    by_label = {(lat.label, lat.via): lat for lat in latencies}
    single = by_label.get((SINGLE, "the only replica"))
    three = by_label.get((THREE, "a non-owner"))
    if single and three:
        for q in (50, 99):
            delta = percentile(three.samples, q) - percentile(single.samples, q)
            result.check(f"p{q} push-to-synced via a non-owner (3 replicas) within 100 ms of 1 replica",
                         f"{ms(percentile(three.samples, q))} vs {ms(percentile(single.samples, q))} "
                         f"({'+' if delta >= 0 else '−'}{ms(abs(delta))})", delta <= 0.1)
    result.notes += [
        f"Everything on one machine: a throwaway PostgreSQL cluster (`initdb`/`pg_ctl`, fsync off), the Git server "
        f"(smart HTTP, one branch per app, {ENTITIES} entities each), {sizes.apps} Sesam emulators behind one "
        f"loopback server, and `autodeployer run` replicas as processes (HEARTBEAT_INTERVAL {HEARTBEAT:g} s, "
        f"`head_check: git`, default policy but `health_window: {HEALTH_WINDOW:g}`, poll every {INTERVAL:g} s).",
        f"CPU and RSS: sampled after every app synced once and {max(INTERVAL * 1.2, HEALTH_WINDOW + 2.0):g} s more "
        "(the health watch of each first deploy has ended by then: it is a deploy's cost, not a poll's); CPU is "
        "utime+stime of each replica and its reaped git children, in % of one core; RSS at the end of each sample. "
        "PostgreSQL CPU counts the postmaster and the backends alive at the end of each sample. The replicas are "
        "started one after the other, so the first one briefly owns (and syncs) more apps than its share before "
        "it hands them over; its RSS keeps that high-water mark.",
        "Latency: each push goes to one app's branch; the clock starts when the signed webhook is sent (after "
        "`git push` returned) and stops when the pushed pipe is stored on that app's node. With three replicas the "
        "pushes alternate between the app's owner and a replica that does not own it (which forwards the trigger "
        "with NOTIFY); the owner is read from `pg_locks` before each push.",
        f"Take-over: after each kill a fresh replica is started and the apps are rebalanced over three replicas "
        f"before the next kill ({len(takeovers) or sizes.takeovers} rounds); the clock stops when `pg_locks` shows "
        "every app of the killed replica locked by a survivor.",
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.scale_out [--quick]``: this scenario alone, printed (BENCHMARKS.md untouched)."""
    from .report import text_result

    args = sys.argv[1:] if argv is None else argv
    started = time.monotonic()
    result = run(Options(quick="--quick" in args))
    result.seconds = time.monotonic() - started
    print(text_result(result))
    return 1 if result.error else 0


if __name__ == "__main__":
    sys.exit(main())

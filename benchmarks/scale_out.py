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

``run(quick)`` returns the Markdown section; ``scenario(options)`` returns a ScenarioResult for the
report module. ``--quick`` uses 60 apps, shorter windows and fewer repetitions.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from autodeployer.emulators._server import LoopbackServer
from autodeployer.emulators.gitserver import WorkRepo
from autodeployer.emulators.sesam import SesamEmulator

from .core import (
    Options,
    ScenarioResult,
    Table,
    mb,
    ms,
    percentile,
    proc_cpu_seconds,
    proc_rss_bytes,
    wait_until,
)
from .fixtures import (
    GIT_TOKEN,
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
    window: float
    pushes: int
    takeovers: int

    @classmethod
    def of(cls, options: Options) -> Sizes:
        return cls(apps=options.pick(300, 60), window=options.pick(60.0, 15.0), pushes=options.pick(40, 10),
                   takeovers=options.pick(5, 3))


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

    def config(self) -> Path:
        path = self.work / "apps.yaml"
        apps = [{
            "name": f"app{i:03d}",
            "source": {"url": self.git.url_for("acme/config.git"), "branch": branch(i), "token_env": "GITHUB_TOKEN",
                       "head_check": "git"},
            "target": {"kind": "sesam", "api_url": f"{self.nodes_url}/n{i}/api", "jwt_env": "JWT"},
            "policy": {"interval": INTERVAL},
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
        from autodeployer.store_pg import SQL_OWNERS

        with pg.connect(self.store_url.rsplit("/", 1)[1]) as conn:  # type: ignore[union-attr]
            return dict(conn.execute(SQL_OWNERS).fetchall())

    def all_synced(self) -> bool:
        first = entities(ENTITIES)[0]["_id"]
        return all(node.audit(first) is not None for node in self.nodes)


# --------------------------------------------------------------------------- measurements
@dataclass
class Cost:
    label: str
    cpu: list[float]  # per replica: fraction of one core
    rss: list[int]  # per replica: bytes at the end of the window
    pg_cpu: float | None  # PostgreSQL, fraction of one core


@dataclass
class Latency:
    label: str
    samples: list[float]
    via: str  # where the webhook was sent: the only replica, the owner, a non-owner


def measure_cost(label: str, fleet: Fleet, seconds: float, pg: Postgres | None) -> Cost:
    pids = [s.proc.pid for s in fleet.replicas.values()]
    cpu0 = [proc_cpu_seconds(p) for p in pids]
    pg0 = pg.cpu_seconds() if pg else 0.0
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    cpu = [(proc_cpu_seconds(p) - c) / wall for p, c in zip(pids, cpu0, strict=True)]
    pg_cpu = (pg.cpu_seconds() - pg0) / wall if pg else None
    return Cost(label, cpu, [proc_rss_bytes(p) for p in pids], pg_cpu)


def signed_push(client: httpx.Client, url: str, i: int, sha: str) -> int:
    body = json.dumps({"ref": f"refs/heads/{branch(i)}", "after": sha, "repository": {"full_name": "acme/config"}}).encode()
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
            sha = repo.push(i, entity_id)
            node = fleet.nodes[i]
            start = time.perf_counter()
            status = signed_push(client, fleet.replicas[sender].url, i, sha)
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
    from autodeployer.store_pg import SQL_OWNERS

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
def scenario(options: Options) -> ScenarioResult:
    started = time.monotonic()
    sizes = Sizes.of(options)
    result = ScenarioResult("scale", "Scale-out")
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
        configs = [("1 replica, SQLite (default)", 1, False), ("1 replica, PostgreSQL", 1, True),
                   ("3 replicas, PostgreSQL", 3, True)]
        for n, (label, replicas, shared) in enumerate(configs):
            for node in nodes:
                node.reset()
            url = pg.create_database(f"bench{n}") if shared else None
            fleet = Fleet(work / f"fleet{n}", git, nodes, server.url, url)
            fleet.work.mkdir()
            try:
                for r in range(replicas):
                    fleet.start(f"r{r + 1}")
                wait_until(fleet.all_synced, 600, interval=0.5, what=f"{label}: every app synced once")
                if replicas > 1:
                    wait_until(lambda fleet=fleet, replicas=replicas: len(set(fleet.owners(pg).values())) == replicas,
                               60, interval=0.2,
                               what="apps spread over every replica")
                time.sleep(INTERVAL * 1.2)  # the start-up burst gives way to steady polling
                costs.append(measure_cost(label, fleet, sizes.window, pg if shared else None))
                latencies += measure_latency(label, fleet, repo, sizes.pushes, pg if shared else None, str(n))
                if replicas > 1:
                    takeovers = measure_takeovers(fleet, pg, sizes.takeovers)
            finally:
                fleet.stop()
    except Exception as exc:  # report what was measured, and why the rest was not
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        git.stop()
        server.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(result, sizes, costs, latencies, takeovers)
    result.seconds = time.monotonic() - started
    return result


def report(result: ScenarioResult, sizes: Sizes, costs: list[Cost], latencies: list[Latency],
           takeovers: list[float]) -> None:
    cost_table = Table(f"Per-replica cost: {sizes.apps} apps, {INTERVAL:g} s poll, {sizes.window:g} s window",
                       ["Configuration", "Replica CPU (% of a core)", "Replica RSS", "PostgreSQL CPU"])
    for cost in costs:
        cost_table.add(cost.label, ", ".join(f"{c * 100:.1f} %" for c in cost.cpu),
                       ", ".join(mb(r) for r in cost.rss),
                       f"{cost.pg_cpu * 100:.1f} %" if cost.pg_cpu is not None else "-")
    latency_table = Table(f"Push-to-synced, one app's branch ({sizes.pushes} pushes per row)",
                          ["Configuration", "Webhook sent to", "p50", "p99", "max"])
    for lat in latencies:
        latency_table.add(lat.label, lat.via, ms(percentile(lat.samples, 50)), ms(percentile(lat.samples, 99)),
                          ms(max(lat.samples)))
    result.tables += [cost_table, latency_table]
    if takeovers:
        take = Table("Take-over after kill -9 (3 replicas, HEARTBEAT_INTERVAL 2 s)", ["Rounds", "median", "min", "max"])
        take.add(len(takeovers), ms(statistics.median(takeovers)), ms(min(takeovers)), ms(max(takeovers)))
        result.tables.append(take)
        bound = max(5.0, 2 * HEARTBEAT)
        result.check(f"take-over within max(5 s, 2 x heartbeat) = {bound:g} s",
                     f"median {ms(statistics.median(takeovers))}, max {ms(max(takeovers))}", max(takeovers) <= bound)
    by_label = {(lat.label, lat.via): lat for lat in latencies}
    single = by_label.get(("1 replica, SQLite (default)", "the only replica"))
    three = by_label.get(("3 replicas, PostgreSQL", "a non-owner"))
    if single and three:
        for q in (50, 99):
            delta = percentile(three.samples, q) - percentile(single.samples, q)
            result.check(f"p{q} via a non-owner within 100 ms of one replica",
                         f"{ms(percentile(three.samples, q))} vs {ms(percentile(single.samples, q))} "
                         f"({'+' if delta >= 0 else '−'}{ms(abs(delta))})", delta <= 0.1)
    result.notes.append(
        "Each app follows its own branch, so one push wakes one app. Latency: from sending the signed webhook "
        "(after `git push` returned) until the pushed pipe is stored on the app's node; with three replicas the "
        "webhook goes alternately to the app's owner and to a replica that does not own it (which forwards it with "
        "NOTIFY). CPU and RSS are the "
        "replica processes' own (git children included); PostgreSQL CPU counts the backends alive at the end of "
        "the window. All processes share one machine.")


def run(quick: bool) -> str:
    """The Markdown section with the figures (standalone: `python -c 'from benchmarks import scale_out; ...'`)."""
    from .report import md_table

    result = scenario(Options(quick=quick))
    out = [f"## {result.title}", "", f"_{result.seconds:.0f} s{' (quick run)' if quick else ''}._", ""]
    if result.error:
        out += [f"**Error**: {result.error}", ""]
    for table in result.tables:
        out += [f"**{table.title}**", "", md_table(table.columns, table.rows), ""]
    if result.checks:
        out += [md_table(["Target", "Measured", "Met"],
                         [[c.target, c.measured, "met" if c.met else "**missed**"] for c in result.checks]), ""]
    out += [*result.notes, ""]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv))

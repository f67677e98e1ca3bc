"""Scenario 4: 100 signed pushes within one second must cost at most two applies.

The 100 commits (one pipe each) are authored beforehand in the working clone and their objects
pushed to a side ref; during the burst, each step moves ``refs/heads/master`` to the next commit
(a ``git update-ref --stdin`` transaction, the ref update that ends a push) and delivers that push's
webhook right away. The branch therefore really moves commit by commit while the deliveries arrive,
which a ``git push`` per commit (~20 ms each) could not do a hundred times within a second.
"""

from __future__ import annotations

import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autodeployer.scheduling import BURST_MAX_WAIT, SETTLE
from autodeployer_emulators.gitserver import git_env
from autodeployer_emulators.sesam import SesamEmulator

from .core import Options, ScenarioResult, Summary, Table, count, fmt_summary, ms, wait_until
from .fixtures import (
    SESAM_JWT,
    Change,
    ConfigRepo,
    Hookshot,
    ServerProcess,
    managed,
    sesam_vars,
    stop_process,
    webhook_service,
)

SIZE = 1_000
PUSHES = 100
WINDOW = 1.0  # the deliveries are paced to fit in this many seconds
QUIET = 2.0  # no PUT for this long after the final state means the burst has settled


class RefMover:
    """One long-lived ``git update-ref --stdin``: moving a ref is a sub-millisecond transaction."""

    def __init__(self, bare: Path, ref: str = "refs/heads/master") -> None:
        self.ref = ref
        self._proc = subprocess.Popen(["git", "update-ref", "--stdin"], cwd=bare, env=git_env(), text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def move(self, new: str, old: str) -> None:
        assert self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(f"start\nupdate {self.ref} {new} {old}\ncommit\n")
        self._proc.stdin.flush()
        answers = [self._proc.stdout.readline().strip() for _ in range(2)]
        if answers != ["start: ok", "commit: ok"]:
            raise RuntimeError(f"update-ref {self.ref}: {answers}")

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()  # end of input: git exits by itself
        try:
            self._proc.wait(5)
        finally:
            stop_process(self._proc)


@dataclass
class Burst:
    span: float  # first to last delivery
    applies: int  # syncs that wrote to the node (synced history rows)
    writes: int  # config writes the node received (a per-entity apply of N pipes is N writes)
    settle: float  # last delivery to the last commit on the node
    total: float  # first delivery to the last commit on the node
    final_ok: bool
    accepted: int


def prepare(repo: ConfigRepo, first: int) -> list[Change]:
    """Author the burst's commits and make their objects available on the server (not the branch)."""
    changes = [repo.commit_change(first + i) for i in range(PUSHES)]
    repo.work.git("push", "-q", "--force", "origin", "HEAD:refs/bench/burst")
    return changes


def one_burst(repo: ConfigRepo, node: SesamEmulator, hookshot: Hookshot, first: int, state_dir: Path) -> Burst:
    changes = prepare(repo, first)
    mover = RefMover(repo.bare)
    try:
        return timed_burst(repo, node, hookshot, changes, mover, state_dir)
    finally:
        mover.close()


def synced_syncs(state_dir: Path) -> int:
    """The service's syncs that wrote to the node so far (its history rows with result `synced`)."""
    db = sqlite3.connect(f"file:{state_dir / 'history.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM history WHERE result = 'synced'").fetchone()[0])
    finally:
        db.close()


def timed_burst(repo: ConfigRepo, node: SesamEmulator, hookshot: Hookshot, changes: list[Change],
                mover: RefMover, state_dir: Path) -> Burst:
    last_id = changes[-1].entity["_id"]
    baseline, puts, syncs = node.audit(last_id), node.put_count, synced_syncs(state_dir)
    accepted = 0
    start = time.perf_counter()
    for i, change in enumerate(changes):
        pause = start + i * WINDOW / PUSHES - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        mover.move(change.after, change.before)
        accepted += hookshot.deliver(hookshot.payload(change.before, change.after)) == 202
    sent = time.perf_counter()
    wait_until(lambda: node.audit(last_id) != baseline, 30, interval=0.002, what="the last commit on the node")
    landed = time.perf_counter()
    settle_quietly(node)
    final_ok = managed(node.entities()) == repo.expected
    return Burst(sent - start, synced_syncs(state_dir) - syncs, node.put_count - puts, landed - sent,
                 landed - start, final_ok, accepted)


def settle_quietly(node: SesamEmulator, limit: float = 15.0) -> None:
    """Wait until no PUT has arrived for QUIET seconds (bounded by ``limit``)."""
    deadline = time.monotonic() + limit
    seen, since = node.put_count, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < QUIET:
        time.sleep(0.05)
        if node.put_count != seen:
            seen, since = node.put_count, time.monotonic()


def run(options: Options) -> ScenarioResult:
    result = ScenarioResult("burst", "4. Bursts")
    bursts_wanted = options.pick(5, 2)
    bursts: list[Burst] = []
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        work = Path(tmp)
        repo = ConfigRepo(work / "git", work / "work", SIZE)
        node = SesamEmulator(jwt=SESAM_JWT)
        node.load(list(repo.expected.values()))
        with ServerProcess.git(work / "git") as server, node.serve() as sesam_server:
            target = sesam_vars(sesam_server.url + "/api")
            with webhook_service(server.url_for("acme/config.git"), target, work, "burst",
                                 work / "git" / "acme" / "config.git") as (hook, _):
                for b in range(bursts_wanted):
                    bursts.append(one_burst(repo, node, hook, first=b * PUSHES, state_dir=work / "state-burst"))
    report(result, bursts)
    return result


def report(result: ScenarioResult, bursts: list[Burst]) -> None:
    def col(attr: str, unit=ms) -> str:  # type: ignore[no-untyped-def]
        return fmt_summary(Summary.of(getattr(b, attr) for b in bursts), unit)

    table = Table(f"{len(bursts)} bursts of {PUSHES} signed pushes, one commit each, {SIZE:,} entities "
                  "(median (min–max))",
                  ["Bursts", "Deliveries sent in", "Accepted (202)", "Applies (syncs that wrote)", "Config writes",
                   "Last delivery → final state", "First delivery → final state", "Final state = last commit"])
    table.add(len(bursts), col("span"), col("accepted", count), col("applies", count), col("writes", count),
              col("settle"), col("total"), f"{sum(b.final_ok for b in bursts)} of {len(bursts)}")
    result.tables.append(table)
    worst = max(b.applies for b in bursts)
    result.check(f"at most 2 applies per burst of {PUSHES} pushes", f"max {worst} over {len(bursts)} bursts",
                 worst <= 2)
    result.check("final state equals the last commit", f"{sum(b.final_ok for b in bursts)} of {len(bursts)}",
                 all(b.final_ok for b in bursts))
    result.notes += [
        "Method: the 100 commits are authored first and pushed to a side ref; during the burst each step moves "
        "`refs/heads/master` to the next commit (a `git update-ref --stdin` transaction) and at once delivers "
        "that push's signed webhook (payload from the GitHub emulator, hook registered by the service), "
        "paced to fit in one second. "
        "So the branch head really advances while the deliveries arrive.",
        f"Expected behaviour (scheduling.py): the first push syncs at once; pushes that arrive while it runs are "
        f"held until they have been quiet for {SETTLE:g} s (at most {BURST_MAX_WAIT:g} s), then one more sync "
        "deploys the branch head. 'Last delivery → final state' therefore includes that settle time.",
        "Applies are the service's syncs that wrote to the node (its history rows with result `synced`); config "
        "writes are the requests the Sesam emulator counted: a replace-all `PUT /config` is one, a per-entity "
        "apply (targets/sesam_apply.py) one per changed pipe. The burst ends when no write came for "
        f"{QUIET:g} s; the final state is compared entity by entity with the last commit.",
    ]

"""Section 1 of issue 8: faults injected with real processes and real sockets, then recovery.

The service runs as a real process (`autodeployer run`) and reaches the Sesam emulator through a TCP
fault proxy (tests/reliability/faultproxy.py), so it sees real refused connections, resets, silence
and lost answers. Git faults come from the smart-HTTP server's own switches, GitHub faults from the
GitHub emulator's. Each outage is measured: how many requests reached the failing side while it was
failing, against the bound that scheduling.backoff_delay allows, and how long recovery took.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import entity_json, free_port, history_rows, pipe, stripped, wait_for
from .faultproxy import FaultProxy
from .support import (
    PsSampler,
    check_no_leaks,
    max_attempts,
    no_backoff_attempts,
)

INTERVAL = 0.2
WINDOW = 4.0  # seconds each outage lasts (the 500 outage: 8 s)
OK = ("synced", "no-change")
# what httpx reports for a connection reset, depending on when the RST lands
RESET_ERRORS = ("ReadError", "ConnectError", "RemoteProtocolError", "WriteError")


# --------------------------------------------------------------------------- helpers
def commit(repo: WorkRepo, name: str) -> str:
    repo.write({f"pipes/{name}.conf.json": entity_json(pipe(name))})
    repo.commit(f"add {name}")
    return repo.push()


def upload_rule(proxy: FaultProxy, action: Any, seconds: float = 0.0) -> None:
    """The fault on the upload, whichever way it is written: the replace-all PUT or, for the one new pipe
    of each case, the per-entity POST /api/pipes (targets/sesam_apply.py)."""
    for method in ("PUT", "POST"):
        proxy.rule(method, action, seconds=seconds)


def rows_after(state_dir: Path, after: int) -> list[sqlite3.Row]:
    return [r for r in history_rows(state_dir) if r["id"] > after]


def last_id(state_dir: Path) -> int:
    rows = history_rows(state_dir)
    return rows[-1]["id"] if rows else 0


def recorded(state_dir: Path, after: int, revision: str, results: tuple[str, ...]) -> Callable[[], bool]:
    """A wait_for predicate: a history row after `after` for `revision` with one of `results`."""
    return lambda: any(r["result"] in results and r["revision"] == revision for r in rows_after(state_dir, after))


def settled(state_dir: Path, base_url: str) -> None:
    """Wait until the app is healthy again: last attempt ok and no failure streak."""
    def ok() -> bool:
        app = httpx.get(base_url + "/api/apps/node", timeout=5).json()
        return app["last_result"] in OK and app["consecutive_failures"] == 0
    wait_for(ok, timeout=30, what="app healthy")


def responsive(base_url: str) -> float:
    """/healthz and /api/apps both answer; returns the health latency in ms (client setup excluded)."""
    with httpx.Client(base_url=base_url, timeout=5) as client:
        start = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        latency = (time.perf_counter() - start) * 1000
        assert client.get("/api/apps").status_code == 200
    return round(latency, 1)


@dataclass
class Outage:
    name: str
    inject: Callable[[], None]
    clear: Callable[[], None]
    count: Callable[[], int] | None  # requests seen by the failing side, or None if it cannot see them
    per_attempt: int  # requests one failing sync attempt sends (transport.request retries transient errors twice)
    error: tuple[str, ...]  # one of these is expected in every recorded error


def run_outage(outage: Outage, svc: Any, repo: WorkRepo, sesam: SesamEmulator, state_dir: Path,
               window: float = WINDOW, name_commit: str | None = None) -> dict[str, Any]:
    """Inject, keep the fault for `window` s (a commit is pushed meanwhile), clear, wait for recovery."""
    settled(state_dir, svc.url)
    time.sleep(0.3)
    first = last_id(state_dir)
    before = outage.count() if outage.count else 0
    outage.inject()
    head = commit(repo, name_commit or outage.name)
    time.sleep(window)
    seen = (outage.count() - before) if outage.count else None
    latency = responsive(svc.url)
    failed = [r for r in rows_after(state_dir, first) if r["result"] == "failed"]
    outage.clear()
    cleared = time.monotonic()
    wait_for(recorded(state_dir, first, head, OK), timeout=60, what=f"recovery after {outage.name}")
    recovery = time.monotonic() - cleared
    assert (name_commit or outage.name) in stripped(sesam.entities()), "the commit pushed during the outage is live"
    assert failed, f"{outage.name}: no failed attempt recorded"
    assert all(any(e in (r["error"] or "") for e in outage.error) for r in failed), [r["error"] for r in failed]
    attempts_bound = max_attempts(INTERVAL, window)
    figures: dict[str, Any] = {
        "window_s": window,
        "failed_attempts": len(failed),
        "attempt_bound": attempts_bound,
        "attempts_without_backoff": no_backoff_attempts(INTERVAL, window),
        "requests_seen": seen,
        "request_bound": attempts_bound * outage.per_attempt,
        "requests_without_backoff": no_backoff_attempts(INTERVAL, window) * outage.per_attempt,
        "recovery_s": round(recovery, 2),
        "health_ms_during": latency,
        "error": failed[0]["error"].split("\n")[0][:120],
    }
    assert len(failed) <= attempts_bound, figures
    if seen is not None:
        assert seen <= attempts_bound * outage.per_attempt, figures
    # recovery waits at most one backoff step (capped) after the fault clears, plus one sync
    assert recovery < INTERVAL * 2 ** len(failed) * 1.1 + 5, figures
    return figures


# --------------------------------------------------------------------------- target outages
def test_target_outages_back_off_and_recover(service, rel_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                             sesam_proxy: FaultProxy, state_dir: Path, results):
    """500s, 503s, resets and a vanished node: bounded requests while failing, recovery without help."""
    svc = service(rel_env)
    proxy = sesam_proxy

    def reset_all() -> None:
        proxy.on_connect("reset")
        proxy.reset_connections()

    outages = [
        Outage("sesam-500", lambda: proxy.rule("*", "status", status=500), proxy.clear,
               lambda: proxy.count("GET"), 1, ("500",)),
        Outage("sesam-503", lambda: proxy.rule("*", "status", status=503), proxy.clear,
               lambda: proxy.count("GET"), 3, ("503",)),
        Outage("sesam-reset", reset_all, proxy.clear, lambda: proxy.connections, 3, RESET_ERRORS),
        Outage("sesam-down", proxy.down, proxy.up, None, 3, ("ConnectError",)),
    ]
    with PsSampler() as ps:
        for outage in outages:
            window = 8.0 if outage.name == "sesam-500" else WINDOW
            figures = run_outage(outage, svc, config_repo, sesam, state_dir, window=window)
            results("faults", outage.name, **figures)
    assert svc.proc.poll() is None
    leaks = check_no_leaks(svc.url, svc.log(), state_dir)
    ps.check()
    results("secrets", "target outages", ps_snapshots=len(ps.snapshots), **leaks)


def test_slow_and_lost_applies_never_apply_twice(service, rel_env, config_repo: WorkRepo, sesam: SesamEmulator,
                                                 sesam_proxy: FaultProxy, state_dir: Path, results):
    """The PUT times out, the answer to the PUT is lost, the PUT is reset before the node sees it.

    Each sync retries the PUT at most twice (http.request); a revision is never uploaded again once
    the node has it: the next attempt reads the node back and finds nothing to do.
    """
    svc = service({**rel_env, "SESAM_TIMEOUT": "1"})
    wait_for(lambda: "orders" in stripped(sesam.entities()), what="first sync")
    cases = [
        ("put-timeout", lambda: upload_rule(sesam_proxy, "delay-response", seconds=3), "timed out", True),
        ("put-answer-lost", lambda: upload_rule(sesam_proxy, "lose-response"), "ReadError", True),
        ("put-reset-before-node", lambda: upload_rule(sesam_proxy, "reset"), "ReadError", False),
    ]
    for name, inject, error, node_got_it in cases:
        settled(state_dir, svc.url)
        first, puts = last_id(state_dir), sesam.put_count
        inject()
        head = commit(config_repo, name)
        wait_for(recorded(state_dir, first, head, ("failed",)), timeout=30, what=f"{name} failure")
        if node_got_it:  # recovers while the fault is still there: nothing left to upload
            wait_for(recorded(state_dir, first, head, OK), timeout=30, what=f"{name} converged")
            sesam_proxy.clear()
        else:
            time.sleep(2)
            sesam_proxy.clear()
            wait_for(recorded(state_dir, first, head, OK), timeout=30, what=f"{name} recovered")
        time.sleep(1)
        rows = rows_after(state_dir, first)
        failed = [r for r in rows if r["result"] == "failed"]
        uploads = sesam.put_count - puts
        assert name in stripped(sesam.entities())
        assert all(error in r["error"] for r in failed), [r["error"] for r in failed]
        assert uploads <= 3 * len(failed) + 1, (name, uploads, len(failed))
        assert [r["result"] for r in rows if r["revision"] == head][-1] in OK
        results("faults", name, failed_attempts=len(failed), puts_at_node=uploads,
                put_bound=3 * len(failed) + 1, final=rows[-1]["result"], error=failed[0]["error"][:120])
    assert svc.proc.poll() is None
    check_no_leaks(svc.url, svc.log(), state_dir)


# --------------------------------------------------------------------------- git outages
def test_git_faults_back_off_and_recover(service, rel_env, git_server: GitHttpServer, config_repo: WorkRepo,
                                         sesam: SesamEmulator, state_dir: Path, results):
    """Git down (503) and answering 500: bounded requests; slow Git (1 s per answer): still deploys."""
    svc = service(rel_env)
    wait_for(lambda: "orders" in stripped(sesam.entities()), what="first sync")

    def count() -> int:
        return len(git_server.requests)

    outages = [
        Outage("git-down", git_server.down, git_server.up, count, 1, ("503",)),
        Outage("git-500", lambda: git_server.fail_next(500, times=10**6), lambda: git_server.fail_next(500, 0),
               count, 1, ("500",)),
    ]
    for outage in outages:
        figures = run_outage(outage, svc, config_repo, sesam, state_dir)
        results("faults", outage.name, **figures)

    # slow: every answer of the Git server takes 1 s; the push still arrives, the service stays responsive
    settled(state_dir, svc.url)
    git_server.set_delay(1.0)
    try:
        pushed = time.monotonic()
        commit(config_repo, "slowgit")
        latencies = []
        deadline = time.monotonic() + 60
        while "slowgit" not in stripped(sesam.entities()):
            assert time.monotonic() < deadline, "slow Git: commit never applied"
            latencies.append(responsive(svc.url))
            time.sleep(0.2)
        took = time.monotonic() - pushed
    finally:
        git_server.set_delay(0)
    assert max(latencies) < 500
    results("faults", "git-slow", delay_per_answer_s=1.0, push_to_live_s=round(took, 1),
            health_ms_max=max(latencies), health_probes=len(latencies))
    assert svc.proc.poll() is None
    check_no_leaks(svc.url, svc.log(), state_dir)


# --------------------------------------------------------------------------- GitHub outages
def test_github_outages_never_stop_syncs(service, rel_env, github, config_repo: WorkRepo, sesam: SesamEmulator,
                                         state_dir: Path, results):
    """GitHub's API answering 500, rate-limiting (403 + Retry-After) and down: every commit still
    deploys; commit statuses and hook registration fail quietly, respect Retry-After and back off;
    both recover once GitHub is back."""
    port = urlsplit(github.url).port
    with FaultProxy(port) as gh:
        public = f"http://127.0.0.1:{free_port()}"
        env = {**rel_env, "GITHUB_API_URL": gh.url, "PUBLIC_URL": public, "PORT": public.rsplit(":", 1)[1]}
        gh.rule("*", "status", status=500)  # GitHub fails from the very start: registration too
        started = time.monotonic()
        svc = service(env)
        wait_for(lambda: "orders" in stripped(sesam.entities()), what="first sync despite GitHub errors")
        phases = [
            ("github-500", lambda: gh.rule("*", "status", status=500), 3.0),
            ("github-rate-limited", lambda: gh.rule("*", "status", status=403, headers={"retry-after": "2"}), 3.0),
            ("github-down", gh.down, 3.0),
        ]
        for name, inject, window in phases:
            inject()
            before = {kind: gh.count_path(prefix) for kind, prefix in GITHUB_PATHS.items()}
            head = commit(config_repo, name.replace("-", ""))
            wait_for(lambda name=name: name.replace("-", "") in stripped(sesam.entities()), timeout=30,
                     what=f"deploy during {name}")
            time.sleep(max(0.0, window - 1))
            seen = {kind: gh.count_path(prefix) - before[kind] for kind, prefix in GITHUB_PATHS.items()}
            row = [r for r in history_rows(state_dir) if r["revision"] == head][-1]
            assert row["result"] == "synced", dict(row)
            figures: dict[str, Any] = {"window_s": window, "commit_deployed": True,
                                       **{f"{k}_requests": v for k, v in seen.items()}}
            if name == "github-rate-limited":  # each client waits out Retry-After: 2 s
                bound = 3 * (int(window / 2) + 2)  # three clients: head check, statuses, registration
                figures["request_bound"] = bound
                assert sum(seen.values()) <= bound, figures
            results("faults", name, **figures)
        gh.up()
        gh.clear()
        head = commit(config_repo, "githubback")
        wait_for(lambda: any(s["state"] == "success" for s in github.statuses("acme", "config", head)),
                 timeout=30, what="commit statuses again")
        hooked = wait_for(lambda: [h for h in github.hooks("acme", "config")
                                   if h["config"]["url"] == public + "/webhook"],
                          timeout=40, what="hook registered after the outage")
        registration_attempts = gh.count_path("/repos/acme/config/hooks", "GET")
        results("faults", "github-recovery", status_posted=True, hook_registered=bool(hooked),
                registration_attempts=registration_attempts,
                seconds_since_start=round(time.monotonic() - started, 1))
        # hook registration backs off 1, 2, 4, ... s (github.register_with_backoff)
        assert registration_attempts <= 2 + math.log2(time.monotonic() - started + 1) + 1
        assert "commit status not posted" in svc.log() and "webhook registration failed; will retry" in svc.log()
        check_no_leaks(svc.url, svc.log(), state_dir)


GITHUB_PATHS = {
    "head_check": "/repos/acme/config/commits/",
    "status": "/repos/acme/config/statuses/",
    "hooks": "/repos/acme/config/hooks",
}


# --------------------------------------------------------------------------- defects found here
def test_hung_node_times_out_within_sesam_timeout(service, rel_env, sesam_proxy: FaultProxy, state_dir: Path,
                                                  sesam: SesamEmulator, results):
    svc = service({**rel_env, "SESAM_TIMEOUT": "1"})
    try:
        wait_for(lambda: "orders" in stripped(sesam.entities()), what="first sync")
        first = last_id(state_dir)
        sesam_proxy.rule("GET", "hang")
        sesam_proxy.reset_connections()
        hung = time.monotonic()
        try:
            # 3 tries of at most SESAM_TIMEOUT s each, plus the retry pauses (0.25 + 0.5 s)
            wait_for(lambda: any(r["result"] == "failed" for r in rows_after(state_dir, first)), timeout=7,
                     what="the hung GET to time out")
        finally:
            results("faults", "sesam-get-hangs", sesam_timeout_s=1,
                    failed_after_s=round(time.monotonic() - hung, 1), expected_within_s=7)
        assert "timed out" in rows_after(state_dir, first)[-1]["error"]
    finally:
        svc.proc.kill()  # a graceful stop would wait for the hung request


def test_reset_error_message_says_what_happened(sesam_proxy: FaultProxy):
    import asyncio

    from autodeployer.errors import TargetError
    from autodeployer.targets.transport import request

    async def call() -> str:
        async with httpx.AsyncClient() as client:
            await request(client, "GET", sesam_proxy.url + "/api/config", retries=0)  # a kept-alive connection
            sesam_proxy.rule("GET", "reset")
            try:
                await request(client, "GET", sesam_proxy.url + "/api/config", retries=0)
            except TargetError as exc:
                return str(exc)
        return ""

    message = asyncio.run(call())
    assert message.startswith("GET ") and not message.endswith("()"), message

"""Several `autodeployer run` replicas sharing 30 apps through a real PostgreSQL server.

Every app is a Sesam node of its own; each node counts the `PUT /api/config` it receives, which is how
"no revision applied twice" is checked: one PUT per node for every commit, whatever happens to the
replicas (kill -9, joins, a PostgreSQL restart).
"""

from __future__ import annotations

import math
import time
from collections import Counter

import httpx
import pytest

from ..helpers import ADMIN_TOKEN, ALL_SECRETS, run_cli, wait_for, window_at
from .conftest import APPS, BOUND, Cluster, ps_snapshot, wait_time
from .pgserver import PASSWORD

pytestmark = pytest.mark.slow


def between(text: str, start: str, end: str) -> str:
    """The part of `text` from `start` to the next `end` (AssertionError naming `start` if absent)."""
    at = text.find(start)
    assert at >= 0, f"{start!r} not in the page"
    return text[at : text.index(end, at)]


def page_agrees(cluster: Cluster, viewer: str, live: list[str], gone: list[str]) -> str | None:
    """The status page of `viewer` when it lists every replica with its state and last heartbeat and shows
    each app's owner as pg_locks has it (read around the page, so a move in between just retries)."""
    before = cluster.db_owners()
    page = httpx.get(cluster.replicas[viewer].url + "/", timeout=10).text
    if cluster.db_owners() != before or set(before) != set(cluster.apps):
        return None
    for name in live + gone:
        row = between(page, f'<tr id="replica-{name}">', "</tr>")
        assert ("live" if name in live else "gone") in row and "<time datetime=" in row, row
    for app in cluster.apps:
        card = between(page, f'id="app-{app}"', "</article>")
        owner = between(card, "<dt>Owner</dt>", "</dd>")
        if f"<code>{before[app]}</code>" not in owner:
            return None
        assert "heartbeat" in owner and "<time datetime=" in owner, owner
    return page


def owned_by(owners: dict[str, str], name: str) -> list[str]:
    return sorted(a for a, o in owners.items() if o == name)


def index(app: str) -> int:
    return int(app.removeprefix("app"))


def test_spread_takeover_after_kill_and_join(cluster_factory):
    cluster: Cluster = cluster_factory(interval=1.0)
    for name in ("r1", "r2", "r3"):
        cluster.start(name)
    owners = cluster.wait_balanced(["r1", "r2", "r3"])
    counts = Counter(owners.values())
    assert sum(counts.values()) == APPS and max(counts.values()) <= math.ceil(APPS / 3) + 1
    cluster.wait_everywhere("orders")  # the initial configuration, applied by each app's owner

    first = cluster.commit("one")
    cluster.wait_everywhere("one")
    assert cluster.nodes.puts() == [2] * APPS

    # kill -9 the busiest replica: its apps move to the survivors within the bound
    cluster.wait_recorded()
    victim = counts.most_common(1)[0][0]
    orphans = owned_by(owners, victim)
    survivors = sorted(set(cluster.replicas) - {victim})
    cluster.kill(victim)

    def adopted() -> bool:
        now = cluster.db_owners()
        return all(now.get(a) in survivors for a in orphans)

    took = wait_time(adopted, timeout=BOUND + 5)
    assert took <= BOUND, f"take-over took {took:.2f} s (bound {BOUND} s)"
    cluster.wait_balanced(survivors)

    second = cluster.commit("two")
    cluster.wait_everywhere("two")
    time.sleep(1.5)  # a few more polls: nobody applies anything twice
    assert cluster.nodes.puts() == [3] * APPS, cluster.nodes.puts()

    # a replica joins and takes a share
    cluster.start("r4")
    names = [*survivors, "r4"]
    owners = cluster.wait_balanced(names)
    assert len(owned_by(owners, "r4")) >= APPS // len(names) - 1
    assert max(Counter(owners.values()).values()) <= math.ceil(APPS / len(names)) + 1

    cluster.commit("three")
    cluster.wait_everywhere("three")
    time.sleep(1.5)
    assert cluster.nodes.puts() == [4] * APPS, cluster.nodes.puts()

    # a clean stop (SIGTERM) hands the apps over at once, without waiting for the bound
    handed = owned_by(cluster.db_owners(), "r4")
    assert cluster.replicas.pop("r4").stop() == 0
    took = wait_time(lambda: set(handed) <= {a for a, o in cluster.db_owners().items() if o in survivors},
                     timeout=BOUND)
    assert took < 1.5, f"hand-over after SIGTERM took {took:.2f} s"

    # history says which replica applied what; every attempt of one revision is on one replica
    viewer = survivors[0]
    rows = httpx.get(cluster.replicas[viewer].url + "/api/apps/app00/history?limit=50").json()["history"]
    applied = [r for r in rows if r["result"] == "synced"]
    assert len({r["revision"] for r in applied}) == len(applied) == 4
    assert {r["revision"] for r in applied} >= {first, second}
    assert all(r["details"]["replica"] in ("r1", "r2", "r3", "r4") for r in applied)

    # status, metrics and the password
    def metrics_agree() -> str | None:  # every live replica's share, as one of them sees it, is pg_locks'
        owned = Counter(cluster.db_owners().values())
        text = httpx.get(cluster.replicas[viewer].url + "/metrics").text
        return text if all(f'autodeployer_owned_apps{{replica="{n}"}} {float(owned[n])}' in text
                           for n in survivors) else None

    metrics = wait_for(metrics_agree, timeout=10, what="owned apps per replica in the metrics")
    assert "autodeployer_replicas 2.0" in metrics
    apps = httpx.get(cluster.replicas[viewer].url + "/api/apps").json()["apps"]
    assert {a["owner"] for a in apps} == set(survivors) and all(a["owner_heartbeat_at"] for a in apps)
    # the status page: each replica with its last heartbeat (the killed and the stopped one as gone), each
    # app's owner with the owner's heartbeat, and no degraded banner
    page = wait_for(lambda: page_agrees(cluster, viewer, survivors, [victim, "r4"]), timeout=10,
                    what="the status page showing the owners pg_locks has")
    assert 'id="replicas"' in page and 'id="degraded"' not in page
    bodies = metrics + httpx.get(cluster.replicas[viewer].url + "/api/replicas").text + str(apps) + ps_snapshot()
    bodies += page
    for secret in (PASSWORD, *ALL_SECRETS):
        assert secret not in bodies
        assert secret not in cluster.logs()


def app_view(cluster: Cluster, replica: str, app: str) -> dict:
    return httpx.get(f"{cluster.replicas[replica].url}/api/apps/{app}", timeout=10).json()


def test_webhooks_and_admin_actions_work_on_any_replica(cluster_factory):
    cluster: Cluster = cluster_factory(interval=3600)  # no polling: only webhooks and actions sync
    for name in ("r1", "r2", "r3"):
        cluster.start(name)
    owners = cluster.wait_balanced(["r1", "r2", "r3"])
    cluster.wait_everywhere("orders")

    # one push, delivered to r1: the apps r2 and r3 own are synced through NOTIFY
    head = cluster.commit("hooked")
    answer = cluster.webhook("r1", head)
    assert answer.status_code == 202 and len(answer.json()["apps"]) == APPS
    cluster.wait_everywhere("hooked", timeout=15)
    assert cluster.nodes.puts() == [2] * APPS
    elsewhere = [a for a in owned_by(owners, "r2") + owned_by(owners, "r3")]
    last = app_view(cluster, "r1", elsewhere[0])
    assert last["live_revision"] == head and last["owner"] in ("r2", "r3")

    # a manual sync asked of r1 runs on the owner (r3), whose replica id the history row carries
    synced = owned_by(owners, "r3")[0]
    assert cluster.admin("r1", synced, "sync").status_code == 202

    def manual_rows() -> list[dict]:
        rows = httpx.get(f"{cluster.replicas['r2'].url}/api/apps/{synced}/history", timeout=10).json()["history"]
        return [r for r in rows if r["trigger"] == "manual" and r["result"] != "running"]

    manual = wait_for(manual_rows, timeout=15, what="the manual sync in the history")
    assert [r["details"]["replica"] for r in manual] == ["r3"] and manual[0]["result"] == "no-change", manual

    # suspend an app of r2 through r3; the state is shared, so every replica reports it
    app = owned_by(owners, "r2")[0]
    assert cluster.admin("r3", app, "suspend").status_code == 200
    assert all(app_view(cluster, n, app)["status"] == "suspended" for n in cluster.replicas)

    # its owner dies; the new owner keeps it suspended
    cluster.wait_recorded()
    cluster.kill("r2")
    new_owner = wait_for(lambda: cluster.db_owners().get(app) if cluster.db_owners().get(app) in ("r1", "r3")
                         else None, timeout=BOUND + 2, what="take-over")
    other = "r1" if new_owner == "r3" else "r3"
    head2 = cluster.commit("after-kill")
    assert cluster.webhook(other, head2).status_code == 202
    cluster.wait_everywhere("after-kill", [i for i in range(APPS) if i != index(app)], timeout=20)
    time.sleep(1.0)
    assert not cluster.nodes.has(index(app), "after-kill")
    view = wait_for(lambda: (v := app_view(cluster, other, app))["owner"] == new_owner and v, what="owner shown")
    assert view["status"] == "suspended" and view["live_revision"] == head

    # resume and roll back through the replica that does not own the app
    assert cluster.admin(other, app, "resume").status_code == 202
    wait_for(lambda: cluster.nodes.has(index(app), "after-kill"), timeout=15, what="resumed")
    rolled = cluster.admin(other, app, "rollback", {"revision": head[:12]})
    assert rolled.status_code == 202 and rolled.json()["revision"] == head
    wait_for(lambda: not cluster.nodes.has(index(app), "after-kill"), timeout=15, what="rolled back")
    wait_for(lambda: app_view(cluster, new_owner, app)["live_revision"] == head, what="rollback recorded")
    assert app_view(cluster, other, app)["status"] == "suspended"

    # the operator CLI against the database: owners and heartbeats; a local resume is queued on the owner
    env = cluster.env("cli")
    status = run_cli(env, "status")
    assert "OWNER" in status.stdout and new_owner in status.stdout and "heartbeat" in status.stdout, status.stdout
    # ... and one line per replica: the apps it owns and its last heartbeat
    owned = Counter(cluster.db_owners().values())
    replicas_table = status.stdout[status.stdout.index("LAST HEARTBEAT"):]
    for name in ("r1", "r3"):
        line = next(ln for ln in replicas_table.splitlines() if f" {name} " in ln)
        assert str(owned[name]) in line and "ago" in line, line
    remote = run_cli(env, "status", "--server", cluster.replicas[other].url)
    assert "LAST HEARTBEAT" in remote.stdout and new_owner in remote.stdout, remote.stdout + remote.stderr
    resumed = run_cli(env, "resume", "--app", app)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"queued on replica {new_owner}" in resumed.stdout, resumed.stdout
    wait_for(lambda: cluster.nodes.has(index(app), "after-kill"), timeout=15, what="resumed from the CLI")
    expected = [3] * APPS
    expected[index(app)] = 5  # initial, hooked, after-kill (resume), rollback, after-kill again
    time.sleep(0.5)
    assert cluster.nodes.puts() == expected
    for secret in (PASSWORD, ADMIN_TOKEN):
        assert secret not in status.stdout + status.stderr + resumed.stdout + resumed.stderr


def test_postgres_restart_leaves_no_double_owner(cluster_factory, pg_server):
    cluster: Cluster = cluster_factory(interval=1.0)
    names = ["r1", "r2", "r3"]
    for name in names:
        cluster.start(name)
    cluster.wait_balanced(names)
    cluster.wait_everywhere("orders")

    pg_server.stop()
    for name in names:
        health = wait_for(lambda n=name: "PostgreSQL unreachable" in (h := cluster.get(n, "/healthz")).get("reason", "")
                          and h, timeout=10, what="degraded health")
        assert health["status"] == "degraded" and "not applying" in health["reason"]
        ready = httpx.get(cluster.replicas[name].url + "/readyz")
        assert ready.status_code == 503 and "PostgreSQL" in ready.json()["reason"]
        apps = httpx.get(cluster.replicas[name].url + "/api/apps")  # status keeps answering
        assert apps.status_code == 200 and len(apps.json()["apps"]) == APPS
        assert cluster.self_owned(name) == set()
    assert cluster.admin("r1", "app00", "sync").status_code == 503
    assert httpx.get(cluster.replicas["r1"].url + "/api/apps/app00/history").status_code == 503
    # the status page keeps answering, says why nothing is applied, and so do the metrics
    page = httpx.get(cluster.replicas["r1"].url + "/")
    assert page.status_code == 200 and "PostgreSQL unreachable" in between(page.text, 'id="degraded"', "</p>")
    assert "the shared store cannot be reached" in between(page.text, 'id="app-app00"', "</article>")
    app_page = httpx.get(cluster.replicas["r1"].url + "/apps/app00")
    assert app_page.status_code == 200 and "History is not available" in app_page.text
    assert "PostgreSQL unreachable" in app_page.text
    metrics = httpx.get(cluster.replicas["r1"].url + "/metrics").text
    assert "autodeployer_replicas 0.0" in metrics and 'autodeployer_owned_apps{replica="r1"} 0.0' in metrics
    time.sleep(1.0)
    pg_server.start()

    cluster.wait_balanced(names, timeout=30)
    for _ in range(10):  # and it stays that way: each app in exactly one replica's own view
        views = [cluster.self_owned(n) for n in names]
        assert sum(len(v) for v in views) == len(set().union(*views)) == APPS
        time.sleep(0.1)
    assert all(cluster.get(n, "/healthz") == {"status": "ok"} for n in names)
    page = httpx.get(cluster.replicas["r1"].url + "/").text
    assert 'id="degraded"' not in page and all(f'<tr id="replica-{n}">' in page for n in names)
    cluster.commit("after-restart")
    cluster.wait_everywhere("after-restart")
    time.sleep(1.5)
    assert cluster.nodes.puts() == [2] * APPS


def test_a_sync_overriding_the_windows_asked_of_any_replica_runs_on_the_owner(cluster_factory):
    """An operator's override reaches the replica running the app (NOTIFY carries the flag): it deploys inside
    a deny window and is recorded as overridden there; the other apps stay held. It used to be refused with
    409 unless sent to the owner."""
    cluster: Cluster = cluster_factory(interval=3600, apps=4, windows=[window_at(time.time() - 1, 900)])
    for name in ("r1", "r2"):
        cluster.start(name)
    owners = cluster.wait_balanced(["r1", "r2"])
    app = owned_by(owners, "r2")[0]
    wait_for(lambda: all(app_view(cluster, "r1", a)["status"] == "held" for a in cluster.apps), timeout=20,
             what="every app held by the deny window")
    assert not any(cluster.nodes.has(i, "orders") for i in range(4))

    answer = cluster.admin("r1", app, "sync?override_window=true")
    assert answer.status_code == 202 and answer.json()["override_window"] is True, answer.text
    wait_for(lambda: cluster.nodes.has(index(app), "orders"), timeout=15, what="the override deployed by its owner")

    def overridden() -> list[dict]:
        rows = httpx.get(f"{cluster.replicas['r1'].url}/api/apps/{app}/history", timeout=10).json()["history"]
        return [r for r in rows if r["trigger"] == "manual" and r["result"] != "running"]

    rows = wait_for(overridden, timeout=15, what="the override in the history")
    assert rows[0]["result"] == "synced" and rows[0]["details"]["replica"] == "r2", rows[0]
    assert rows[0]["details"]["window_override"]["overridden"] is True
    assert [i for i in range(4) if cluster.nodes.has(i, "orders")] == [index(app)]  # the others stay held

"""Promotion: an app (prod) deploys a revision only once another app (test) runs it verified and healthy
for `soak` seconds.

Every fact comes from the store (the upstream's AppState and its history), never from a worker's
memory, so it works the same when test and prod are reconciled by different replicas. The revision
the downstream deploys is the upstream's last verified revision, not its own branch head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import Result
from ..store.base import AppState, HistoryRow
from . import Hold

_BLOCKING = (Result.FAILED, Result.REFUSED, Result.INTERRUPTED)  # the upstream's newest attempt went wrong
_LIVE = (Result.SYNCED.value, Result.NO_CHANGE.value)
DEFAULT_SOAK = 600.0


def check_graph(edges: Mapping[str, str | None]) -> str | None:
    """A problem with `promote_from` across the apps (unknown app, itself, a cycle), else None."""
    for app, upstream in edges.items():
        if upstream is None:
            continue
        if upstream not in edges:
            known = ", ".join(sorted(edges))
            return f"apps[{app}].policy.promote_from: no app named {upstream!r} (known: {known})"
        seen = [app]
        current: str | None = upstream
        while current is not None:
            if current in seen:
                chain = " -> ".join([*seen, current])
                return f"apps[{app}].policy.promote_from: promotion cycle {chain}"
            seen.append(current)
            current = edges.get(current)
    return None


def health_of(state: AppState, revision: str) -> dict[str, Any]:
    """The upstream's health record for `revision` (written by the health check), or {} when none."""
    health = state.health or {}
    return dict(health) if isinstance(health, dict) and health.get("revision") == revision else {}


def live_since(state: AppState, revision: str, rows: list[HistoryRow]) -> float | None:
    """When `revision` went live upstream: the health check's verification time, else the end of the
    oldest of the newest run of successful rows for it (a later no-change sync does not restart the soak)."""
    since = health_of(state, revision).get("since")
    if isinstance(since, (int, float)):
        return float(since)
    found: float | None = None
    for row in rows:  # newest first
        if row.result not in _LIVE:
            continue  # held, failed drift repairs, ... do not end the revision's time live
        if row.revision != revision:
            break
        found = row.finished_at or row.started_at
    return found if found is not None else state.last_success_at


def span(seconds: float) -> str:
    """"3 min", "45 s", "2 h 5 min": how long a soak has run."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def promotion_hold(upstream_name: str, upstream: AppState, revision: str, soak: float, now: float,
                   rows: list[HistoryRow]) -> Hold | None:
    """None when `revision` may be deployed downstream; else why not, and when to look again."""
    def hold(text: str, until: float | None = None, **facts: Any) -> Hold:
        return Hold("promotion", f"waiting for {upstream_name}: {text}", until,
                    {"upstream": upstream_name, "revision": revision, **facts})

    short = revision[:7]
    if upstream.suspended:
        return hold(f"it is suspended ({upstream.suspended_reason or 'by an operator'})")
    if upstream.last_synced_revision != revision:
        return hold(f"{short} is not the revision verified there")
    if upstream.last_result in _BLOCKING:
        last = (upstream.last_revision or "")[:7]
        return hold(f"its last attempt ({last}) {upstream.last_result.value if upstream.last_result else 'ended'}")
    health = health_of(upstream, revision)
    checking = health.get("state") == "checking"
    # Degraded blocks; so does a reading under way that found something (a deployment still running, a
    # target that cannot be read). A clean "checking" is healthy so far: it counts up to its last look,
    # so a soak shorter than the health window promotes before the window's final verdict.
    if health.get("state") == "degraded" or (checking and health.get("evidence")):
        return hold(f"{short} is {health['state']} there", health=health.get("state"))
    since = live_since(upstream, revision, rows)
    if since is None:
        return hold(f"{short} has no verified sync there yet")
    observed = min(now, float(health.get("checked_at") or since)) if checking else now
    live_for = observed - since
    if live_for < soak:
        word = "healthy so far" if checking else "healthy" if health.get("state") == "healthy" else "live"
        # a clean reading past the soak's end is due at the next look: wake then, not in a loop
        until = since + soak if since + soak > now else None
        return hold(f"{short} {word} for {span(live_for)} of {span(soak)}", until, since=since, soak=soak)
    return None

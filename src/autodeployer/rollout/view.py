"""The rollout policy as the status page, the API and `autodeployer status` show it, computed live from
the store: whether the windows are open, what is held and why, and the promotion chain
("test: abc1234 healthy 12 min → prod: deploying abc1234").
"""

from __future__ import annotations

from typing import Any

from ..config.loader import AppConfig
from ..model import Result
from ..store.base import AppState, Store
from .gate import HISTORY_SCAN
from .promotion import health_of, live_since, promotion_hold, span
from .windows import format_when, held_reason, verdict


def rollout_view(app: AppConfig, state: AppState, store: Store, now: float,
                 running: bool = False) -> dict[str, Any] | None:
    """None for an app without a rollout policy; else a JSON-able dict with a one-line `summary`."""
    policy = app.policy
    if not policy.windows and policy.promote_from is None:
        return None
    view: dict[str, Any] = {}
    lines: list[str] = []
    held = state.last_result is Result.HELD and not state.suspended
    if policy.windows:
        result = verdict(policy.windows, now)
        view["window"] = {"open": result.open, "next_open": result.next_open,
                          "windows": [w.describe() for w in policy.windows],
                          "reason": None if result.open else held_reason(result, now)}
        if not result.open and not held:
            zone = result.blocking[0].timezone if result.blocking else "UTC"
            until = format_when(result.next_open, zone, now) if result.next_open else "no opening within a year"
            lines.append(f"sync window closed until {until}")
    reason = state.last_error if held else None
    if policy.promote_from is not None:
        chain, live_reason = _chain(app, state, store, now, running, held)
        view["promotion"] = chain
        lines.insert(0, chain["chain"])
        reason = live_reason or reason
    if held:
        view["held"] = {"revision": state.last_revision, "reason": reason}
        lines.append(reason or "held")
    view["summary"] = " · ".join(lines)
    return view


def _chain(app: AppConfig, state: AppState, store: Store, now: float, running: bool,
           held: bool) -> tuple[dict[str, Any], str | None]:
    """The upstream's verified revision and how long it has been live, and this app's step after it."""
    upstream = app.policy.promote_from or ""
    up = store.get_state(upstream)
    revision = up.last_synced_revision
    first = f"{upstream}: nothing deployed yet"
    live_for: float | None = None
    live_reason: str | None = None
    if revision:
        rows = store.history(upstream, HISTORY_SCAN)
        since = live_since(up, revision, rows)
        health = health_of(up, revision).get("state") or ("failed" if up.last_result in (
            Result.FAILED, Result.REFUSED) else "live")
        if up.suspended:
            health = "suspended"
        live_for = now - since if since is not None else None
        first = f"{upstream}: {revision[:7]} {health}" + (f" {span(live_for)}" if live_for is not None else "")
        if held and state.last_revision == revision:
            hold = promotion_hold(upstream, up, revision, app.policy.soak, now, rows)
            live_reason = hold.reason if hold is not None else None
    own = state.last_revision or state.last_synced_revision
    step = ("deploying" if running else "held" if held else
            (state.last_result.label if state.last_result else "pending"))
    second = f"{app.name}: {step} {own[:7]}" if own else f"{app.name}: {step}"
    return ({"from": upstream, "upstream_revision": revision, "upstream_live_for": live_for,
             "soak": app.policy.soak, "chain": f"{first} → {second}"}, live_reason)

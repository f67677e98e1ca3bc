"""Operator commands: status, history, rollback, suspend, resume.

Each works on the local STATE_DIR (what `autodeployer run` on this machine uses) or, with
`--server URL`, through a running service's API (actions need ADMIN_TOKEN in the environment).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import httpx
from rich import box
from rich.console import Console
from rich.table import Table

from ..config.loader import Config
from ..errors import AutodeployerError, ConfigError
from ..model import Reason, Result, Status, SyncResult, Trigger
from ..reconcile import LOCK_WAIT, Reconciler
from ..runtime import build_runtime, coordinator_for, store_for
from ..status import app_row, history_row
from ..store import Store

EXIT_OK, EXIT_ERROR = 0, 2
_TROUBLE = tuple(s.value for s in Status if s.trouble)
_STYLE = {s.value: s.style for s in Status}


def console() -> Console:
    """A terminal (or COLUMNS) sets the width; a pipe gets lines long enough not to break words.

    rich itself honours NO_COLOR."""
    return Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=200)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    delta = time.time() - ts
    if abs(delta) < 90:
        return f"{delta:.0f}s ago" if delta >= 0 else f"in {-delta:.0f}s"
    if abs(delta) < 5400:
        return f"{delta / 60:.0f}m ago" if delta >= 0 else f"in {-delta / 60:.0f}m"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


# --------------------------------------------------------------------------- data access
def _without_credentials(url: str) -> str:
    """A --server URL as it may be shown: user and password in it are replaced by `***`."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Backend:
    """Local store or remote API, same answers."""

    def __init__(self, config_loader: Callable[[], Config], server: str | None) -> None:
        self._load = config_loader
        self.server = _server_url(server) if server else None
        self.shown = _without_credentials(self.server) if self.server else None  # for messages

    def _client(self) -> httpx.Client:
        headers = {}
        token = os.environ.get("ADMIN_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.server or "", headers=headers, timeout=30, trust_env=False)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One call to the service; a connection problem is an error naming --server, not a traceback."""
        try:
            with self._client() as client:
                return client.request(method, path, json=body)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = str(exc).split("\n")[0] or type(exc).__name__
            raise AutodeployerError(f"--server {self.shown}: cannot {method} {path} ({reason})") from None

    def _get(self, path: str) -> Any:
        response = self._request("GET", path)
        if response.status_code != 200:
            raise AutodeployerError(f"--server {self.shown}: GET {path}: {response.status_code} {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise AutodeployerError(f"--server {self.shown}: GET {path} did not answer JSON; "
                                    "is this an autodeployer service?") from None

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._request("POST", path, body)
        if response.status_code >= 300:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise AutodeployerError(f"--server {self.shown}: POST {path}: {response.status_code} {message}")
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            raise AutodeployerError(f"--server {self.shown}: POST {path} did not answer JSON") from None
        return answer

    def apps(self) -> list[dict[str, Any]]:
        """Every app's row; a refused or failed one also carries `problems`, from its last attempt,
        because its `last_error` only says "not deployable" and the operator needs the file."""
        if self.server:
            rows = list(self._get("/api/apps")["apps"])
            for row in rows:
                if row["status"] in _TROUBLE:
                    last = self._get(f"/api/apps/{row['name']}/history?limit=1")["history"]
                    row["problems"] = last[0].get("problems") or [] if last else []
            return rows
        config = self._load()
        store = store_for(config.service)
        try:
            owners, beats = _ownership(store)
            rows = [app_row(app, store, None, owner=owners.get(app.name), owner_heartbeat_at=beats.get(
                owners.get(app.name, ""))) for app in config.apps]
            for row in rows:
                if row["status"] in _TROUBLE:
                    last = store.history(row["name"], 1)
                    row["problems"] = list(last[0].problems) if last else []
            return rows
        finally:
            store.close()

    def app(self, name: str) -> dict[str, Any]:
        if self.server:
            return dict(self._get(f"/api/apps/{name}"))
        config = self._load()
        store = store_for(config.service)
        try:
            owners, beats = _ownership(store)
            return app_row(config.app(name), store, None, owner=owners.get(name),
                           owner_heartbeat_at=beats.get(owners.get(name, "")))
        finally:
            store.close()

    def history(self, app: str | None, limit: int) -> list[dict[str, Any]]:
        if self.server:
            names = [app] if app else [a["name"] for a in self.apps()]
            rows: list[dict[str, Any]] = []
            for name in names:
                rows += self._get(f"/api/apps/{name}/history?limit={limit}")["history"]
            return sorted(rows, key=lambda r: r["id"], reverse=True)[:limit]
        config = self._load()
        if app:
            config.app(app)
        store = store_for(config.service)
        try:
            return [history_row(r) for r in store.history(app, limit)]
        finally:
            store.close()


def _server_url(server: str) -> str:
    """--server as given, checked: httpx's own complaint about a missing scheme names no flag."""
    parts = urlsplit(server.strip())
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"--server: the port in {server!r} is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--server: expected http(s)://HOST[:PORT] of a running service, got {server!r}")
    return server.strip().rstrip("/")


def _ownership(store: Store) -> tuple[dict[str, str], dict[str, float]]:
    """With a shared store: app -> owning replica, and replica -> last heartbeat (empty otherwise)."""
    owners = store.owners()
    return owners, (store.heartbeats() if owners else {})


# --------------------------------------------------------------------------- rendering
WIDE = 120  # below this, the note (the longest column) goes under the table instead of being squeezed


def _note(row: dict[str, Any]) -> str:
    """Why an app is where it is: the suspension reason, the error naming the file, or the live commit."""
    message = (row.get("live_commit") or {}).get("message") or ""
    problems = row.get("problems") or []
    if problems and not row.get("suspended_reason"):  # the first problem names the file
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return str(problems[0]).split("\n")[0] + more
    rollout = (row.get("rollout") or {}).get("summary")
    if rollout and row.get("status") in ("held", "synced", "pending"):  # why held; the promotion chain
        return str(rollout)
    return (row.get("suspended_reason") or row.get("last_error") or message or "").split("\n")[0]


def print_status(rows: list[dict[str, Any]], console: Console) -> None:
    wide = console.width >= WIDE
    table = Table(show_lines=False, header_style="bold", box=box.HEAVY_HEAD if wide else None,
                  pad_edge=wide)
    owners = any(row.get("owner") for row in rows)  # several replicas share the apps
    columns = ("APP", "TARGET", "BRANCH", "STATUS", "LIVE", "LAST SYNC", "NEXT POLL") + (("OWNER",) if owners else ())
    for column in columns:
        table.add_column(column, no_wrap=column != "APP", overflow="fold")
    if wide:
        table.add_column("NOTE", overflow="fold")
    for row in rows:
        live = (row.get("live_revision") or "")[:12 if wide else 7] or "-"
        status = row["status"]
        owner = ((f"{row['owner']} (heartbeat {_when(row.get('owner_heartbeat_at'))})",) if row.get("owner")
                 else ("-",)) if owners else ()
        note = (_note(row)[:80],) if wide else ()
        table.add_row(
            row["name"], row["target"], row["branch"], f"[{_STYLE.get(status, 'white')}]{status}[/]",
            live, _when(row.get("last_attempt_at")), _when(row.get("next_poll_at")), *owner, *note,
        )
    console.print(table)
    if not wide:
        for row in rows:
            if _note(row):
                console.print(f"{row['name']}: {_note(row)}", highlight=False, markup=False)
    if owners:
        print_replicas(rows, console)


def print_replicas(rows: list[dict[str, Any]], console: Console) -> None:
    """Each replica that owns apps: how many, and its last heartbeat (from the status rows)."""
    owned: dict[str, int] = {}
    beats: dict[str, float | None] = {}
    for row in rows:
        if row.get("owner"):
            owned[row["owner"]] = owned.get(row["owner"], 0) + 1
            beats[row["owner"]] = row.get("owner_heartbeat_at")
    table = Table(show_lines=False, header_style="bold")
    for column in ("REPLICA", "APPS OWNED", "LAST HEARTBEAT"):
        table.add_column(column, no_wrap=True)
    for replica in sorted(owned):
        table.add_row(replica, str(owned[replica]), _when(beats[replica]))
    unowned = sum(1 for row in rows if not row.get("owner"))
    if unowned:
        table.add_row("(none)", str(unowned), "-")
    console.print(table)


def print_history(rows: list[dict[str, Any]], console: Console, diffs: bool) -> None:
    for row in rows:
        result, kind = Result.parse(row["result"]), Reason.parse(row.get("reason"))
        style = result.style if result else "red"
        why = f" ({kind.label})" if kind and kind.label != row["result"] else ""
        head = (f"#{row['id']} {row['app']} [{style}]{row['result']}[/]{why} {(row.get('revision') or '')[:12]} "
                f"{row['trigger']}{' (drift)' if row.get('drift') else ''} {_when(row['started_at'])} "
                f"{(row.get('duration') or 0) * 1000:.0f} ms: {row.get('summary') or ''}")
        console.print(head, highlight=False)
        reason = (row.get("error") or "").split("\n")[0]
        if reason and row["result"] != Result.SYNCED and reason != (row.get("summary") or "").split("\n")[0]:
            console.print(f"    reason: {reason}", highlight=False, markup=False)  # only when it adds something
        signature = (row.get("details") or {}).get("signature")
        if signature:  # VERIFY_COMMITS: who signed the commit
            trust = "" if signature.get("trusted") else ", not trusted"
            console.print(f"    signed by {signature.get('signer') or '?'} ({signature.get('kind')} key "
                          f"{signature.get('key')}{trust})", highlight=False, markup=False)
        for problem in row.get("problems") or []:
            console.print(f"    - {problem}", highlight=False, markup=False)
        if diffs and row.get("diff"):
            for line in row["diff"].splitlines():
                colour = "green" if line.lstrip().startswith("+") else "red" if line.lstrip().startswith("-") else None
                console.print(f"    {line}", style=colour, highlight=False, markup=False)


# --------------------------------------------------------------------------- actions
async def _local(config: Config, app: str, action: str, revision: str | None) -> tuple[int, str]:
    runtime = build_runtime(config, apps=[config.app(app)])
    reconciler = runtime.reconcilers[app]
    try:
        if action == "suspend":
            reconciler.suspend("suspended from the command line")
            if runtime.store.warning:  # kept in this process's memory only: gone when it exits
                return EXIT_ERROR, f"{app}: not suspended: {runtime.store.warning}"
            return EXIT_OK, f"{app}: auto-sync suspended"
        owner = runtime.store.owners().get(app)
        if owner:  # a running replica owns the app: queue the action on it rather than apply from here
            if action == "resume":
                reconciler.resume()
                trigger = Trigger.MANUAL
            else:
                assert revision is not None
                revision = await reconciler.pin(revision)
                trigger = Trigger.ROLLBACK
            pinned = f" (pinned {revision[:12]}; auto-sync suspended)" if revision else ""
            if not coordinator_for(runtime.store, [app], config.service).forward(app, trigger):
                return EXIT_ERROR, (f"{app}: {action} saved{pinned}, but replica {owner}, which owns the app, "
                                    "could not be told (PostgreSQL unreachable); run the command again")
            return EXIT_OK, (f"{app}: {action} queued on replica {owner}; `autodeployer status` shows when it is live"
                             + pinned)
        # One apply at a time per app: hold the app's lock across the whole action (the pin and the sync
        # that deploys it), so a service running on the same STATE_DIR neither races it nor is raced.
        if not await reconciler.lock.acquire(LOCK_WAIT):
            return EXIT_ERROR, f"{app}: {reconciler.lock.busy_message(app)} (nothing was changed)"
        try:
            if action == "resume":
                return await _resume(reconciler, app)
            assert revision is not None
            return _rollback_outcome(app, await reconciler.rollback(revision))
        finally:
            reconciler.lock.release()
    finally:
        await runtime.aclose()


async def _resume(reconciler: Reconciler, app: str) -> tuple[int, str]:
    reconciler.resume()
    result = await reconciler.sync(Trigger.MANUAL, force=True)
    return (EXIT_OK if _applied(result) else EXIT_ERROR,
            f"{app}: auto-sync resumed; {result.result.value} at {(result.revision or '')[:12]}"
            + (f" ({result.error or result.summary})" if not _applied(result) else ""))


def _applied(result: SyncResult) -> bool:
    """The target is at the result's revision (a sync that could not run is no success)."""
    return result.result in (Result.SYNCED, Result.NO_CHANGE) and not result.not_applied


def _rollback_outcome(app: str, result: SyncResult) -> tuple[int, str]:
    """Say what happened: "rolled back to X" only when X is live, else why not (exit 2)."""
    sha = (result.revision or "")[:12]
    if _applied(result):
        return EXIT_OK, (f"{app}: rolled back to {sha} ({result.result.value})\nauto-sync is suspended so the next "
                         f"poll does not undo it; `autodeployer resume --app {app}` follows the branch again")
    reason = (result.error or result.summary or result.result.value).split("\n")[0]
    return EXIT_ERROR, (f"{app}: rollback to {sha} failed: {reason}\nthe app stays pinned to {sha} with auto-sync "
                        f"suspended; roll back again to retry, or `autodeployer resume --app {app}` to follow the "
                        "branch again")


def _remote(backend: Backend, app: str, action: str, revision: str | None, console: Console) -> tuple[int, str]:
    path = f"/api/apps/{app}/{action}"
    answer = backend.post(path, {"revision": revision} if revision else None)
    if action == "suspend":
        return EXIT_OK, f"{app}: auto-sync suspended"
    target = answer.get("revision")
    with console.status(f"{app}: waiting for the {action} to finish...") as _:
        deadline = time.time() + 600
        while time.time() < deadline:
            time.sleep(0.3)
            row = backend.app(app)
            if row.get("running") or row.get("pending"):
                continue
            if target and row.get("last_revision") != target:
                continue
            if row.get("last_attempt_at") and (not target or row.get("last_revision") == target):
                ok = row["status"] in (Status.SYNCED, Status.SUSPENDED) and not row.get("last_error")
                live = (row.get("live_revision") or "")[:12]
                if not ok:  # never "done" when it was not: say what failed and what is live
                    to = f" to {target[:12]}" if target else ""
                    why = row.get("last_error") or row["status"]
                    return EXIT_ERROR, f"{app}: {action}{to} failed: {why}; live {live}"
                note = " (auto-sync suspended; resume to follow the branch again)" if action == "rollback" else ""
                return EXIT_OK, f"{app}: {action} done, live {live}{note}"
    return EXIT_ERROR, f"{app}: {action} still running after 10 minutes; see `autodeployer status`"


def run_action(backend: Backend, app: str, action: str, revision: str | None = None) -> None:
    out = console()
    try:
        if backend.server:
            code, message = _remote(backend, app, action, revision, out)
        else:
            config = backend._load()
            with out.status(f"{app}: {action}..."):
                code, message = asyncio.run(_local(config, app, action, revision))
    except AutodeployerError as exc:
        click.echo(click.style("error: ", fg="red", bold=True) + str(exc), err=True)
        sys.exit(EXIT_ERROR)
    click.echo(message)
    sys.exit(code)

"""Measurement helpers of the reliability suite: results file, leak checks, memory, ps, backoff bounds.

Every scenario writes its figures to one JSON file (``RESULTS``); ``report.py`` renders
``RELIABILITY.md`` from it, so the published numbers always come from an actual run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from autodeployer.scheduling import backoff_delay

from ..helpers import ALL_SECRETS

RESULTS = Path(os.environ.get("AUTODEPLOYER_RELIABILITY_RESULTS", "/tmp/autodeployer-reliability.json"))
_LOCK = threading.Lock()
SECRET_FILE = "webhook-secret"  # the one file under STATE_DIR allowed to hold a secret


# --------------------------------------------------------------------------- results file
def load_results() -> dict[str, Any]:
    try:
        return json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return {"scenarios": {}, "tests": {}}


def save_results(data: dict[str, Any]) -> None:
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(RESULTS)


def record(section: str, scenario: str, nodeid: str, **figures: Any) -> None:
    """Add (or replace) one scenario's measured figures; the test outcome is added by conftest."""
    with _LOCK:
        data = load_results()
        entry = data["scenarios"].setdefault(section, {}).setdefault(scenario, {"nodeid": nodeid})
        entry["nodeid"] = nodeid
        entry.setdefault("figures", {}).update(figures)
        save_results(data)


# --------------------------------------------------------------------------- leaks
def leaked(text: str | bytes, secrets: Iterable[str] = ALL_SECRETS) -> list[str]:
    """The secrets found in `text` (by value), for an assertion message that names none of them."""
    data = text.encode() if isinstance(text, str) else text
    return [f"secret #{ALL_SECRETS.index(s) if s in ALL_SECRETS else '?'} ({s[:6]}...)"
            for s in secrets if s.encode() in data]


def state_files(state_dir: Path) -> Iterator[Path]:
    for path in sorted(state_dir.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != SECRET_FILE:
            yield path


def check_no_leaks(base_url: str | None, log: str, state_dir: Path, app: str = "node",
                   secrets: Iterable[str] = ALL_SECRETS, extra: Iterable[str] = ()) -> dict[str, int]:
    """Assert no secret appears in the log, the API, the status pages, /metrics or STATE_DIR files.

    Returns how many places were checked, for the report.
    """
    secrets = tuple(secrets)
    places: dict[str, str | bytes] = {"log": log}
    if base_url:
        for path in ("/", f"/apps/{app}", "/api/apps", f"/api/apps/{app}", f"/api/apps/{app}/history?limit=500",
                     "/metrics", "/openapi.json", "/healthz", "/readyz"):
            try:
                response = httpx.get(base_url + path, timeout=10)
            except httpx.HTTPError:
                continue
            places[f"GET {path}"] = response.content
    for index, text in enumerate(extra):
        places[f"extra #{index}"] = text
    files = 0
    for path in state_files(state_dir):
        places[str(path.relative_to(state_dir))] = path.read_bytes()
        files += 1
    found = {where: leaked(data, secrets) for where, data in places.items()}
    found = {where: hits for where, hits in found.items() if hits}
    assert not found, f"secrets leaked: {found}"
    return {"places": len(places), "state_files": files}


class PsSampler:
    """Samples `ps -eww -o pid,args` in a thread while a scenario runs (service and git children)."""

    def __init__(self, every: float = 0.03) -> None:
        self.every = every
        self.snapshots: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
            self.snapshots.append(out)
            self._stop.wait(self.every)

    def __enter__(self) -> PsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def git_children_seen(self) -> int:
        return sum(1 for s in self.snapshots if any(
            word in s for word in ("git fetch", "git-remote-http", "git cat-file", "git ls-tree", "git rev-parse",
                                   "git index-pack")))

    def check(self, secrets: Iterable[str] = ALL_SECRETS) -> int:
        for snapshot in self.snapshots:
            hits = leaked(snapshot, tuple(secrets))
            assert not hits, f"secret in ps output: {hits}"
        return len(self.snapshots)


# --------------------------------------------------------------------------- memory and latency
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (proc(5): clear_refs, value 5), to measure one scenario's peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(percentile(ms, 99), 1),
            "max_ms": round(max(ms), 1)}


# --------------------------------------------------------------------------- backoff
def max_attempts(interval: float, window: float, jitter: float = 0.1, failures_before: int = 0) -> int:
    """Upper bound on failing sync attempts that can start within `window` seconds of an outage.

    The scheduler waits backoff_delay(interval, failures) * (1 - jitter) at least after the
    failures-th consecutive failure; one attempt already in flight when the fault starts is added.
    """
    attempts, elapsed, failures = 1, 0.0, failures_before + 1
    while True:
        elapsed += backoff_delay(interval, failures) * (1 - jitter)
        if elapsed > window:
            return attempts + 1
        attempts += 1
        failures += 1


def no_backoff_attempts(interval: float, window: float) -> int:
    return int(window / interval) + 1


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    start = time.monotonic()
    try:
        yield box
    finally:
        box["seconds"] = time.monotonic() - start


def history(base_url: str, app: str = "node", limit: int = 500) -> list[dict[str, Any]]:
    """History rows through the API, oldest first."""
    response = httpx.get(f"{base_url}/api/apps/{app}/history", params={"limit": limit}, timeout=10)
    response.raise_for_status()
    return list(reversed(response.json()["history"]))

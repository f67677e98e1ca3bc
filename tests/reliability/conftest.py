"""Fixtures of the reliability suite: a fault proxy in front of the Sesam emulator, the full set of
recognisable secrets in the service's environment, and the results file behind RELIABILITY.md."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import ADMIN_TOKEN, WEBHOOK_SECRET
from . import support
from .faultproxy import FaultProxy

Recorder = Callable[..., None]


@pytest.fixture(scope="session", autouse=True)
def _results_file() -> Iterator[None]:
    """A fresh results file per run; the session's wall time is added at the end."""
    support.save_results({"scenarios": {}, "tests": {}, "started_at": time.time(),
                          "hypothesis_examples": int(os.environ.get("RELIABILITY_EXAMPLES", "100"))})
    start = time.monotonic()
    yield
    data = support.load_results()
    data["session_seconds"] = round(time.monotonic() - start, 1)
    support.save_results(data)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep every reliability test's outcome (xfail included) next to its figures."""
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xpassed" if report.passed else "xfailed"
        data = support.load_results()
        data["tests"][report.nodeid] = {
            "outcome": outcome,
            "seconds": round(report.duration, 2),
            "reason": getattr(report, "wasxfail", "") or "",
        }
        support.save_results(data)


@pytest.fixture
def results(request: pytest.FixtureRequest) -> Recorder:
    """results(section, scenario, **figures): publish measured figures for RELIABILITY.md."""

    def record(section: str, scenario: str, **figures: Any) -> None:
        support.record(section, scenario, request.node.nodeid, **figures)

    return record


@pytest.fixture
def sesam_proxy(sesam: SesamEmulator) -> Iterator[FaultProxy]:
    """The fault proxy in front of the Sesam emulator; the service talks to the proxy only."""
    port = urlsplit(sesam.api_url).port  # type: ignore[attr-defined]
    with FaultProxy(port) as proxy:
        yield proxy


@pytest.fixture
def rel_env(app_env: dict[str, str], sesam_proxy: FaultProxy) -> dict[str, str]:
    """The app through the proxy, fast polling, and every secret the service can hold."""
    return {
        **app_env,
        "SESAM_API_URL": sesam_proxy.url + "/api",
        "SYNC_INTERVAL": "0.2",
        "DRIFT_INTERVAL": "0.2",  # every poll reads the node too, so faults on the node are met at once
        "HEALTH_WINDOW": "0",  # requests are bounded per sync attempt here; the health watch has its own tests
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
    }

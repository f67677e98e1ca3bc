"""Per-step timings of a sync: stored on the history row (details.timings, ms) and exposed in /metrics as
`autodeployer_sync_step_seconds{app,step}`; real Git over smart HTTP, the Sesam emulator, CLI and service as
processes."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from autodeployer.model import Result, SyncResult, Trigger
from autodeployer.reporters.metrics import Metrics, MetricsReporter
from autodeployer.timings import STEPS, StepTimings, step_seconds
from autodeployer_emulators.sesam import SesamEmulator

from .helpers import history_rows, run_cli, wait_for


def timings_of(row) -> dict[str, float]:
    return json.loads(row["details"])["timings"]


def test_a_sync_records_how_long_each_step_took(app_env, sesam: SesamEmulator, state_dir):
    first = run_cli(app_env, "sync")
    assert first.returncode == 0, first.stderr
    second = run_cli(app_env, "sync")  # nothing to change: no apply, no verify
    assert second.returncode == 0, second.stderr
    applied, quiet = history_rows(state_dir, "node")
    timings = timings_of(applied)
    assert list(timings) == list(STEPS), timings  # every step, in the order they ran
    assert all(isinstance(ms, (int, float)) and ms >= 0 for ms in timings.values())
    assert timings["apply"] > 0 and timings["verify"] > 0 and timings["fetch"] > 0
    # the steps up to verify lie within the sync's duration (taken when the record step builds the result)
    assert sum(ms for step, ms in timings.items() if step != "record") <= applied["duration"] * 1000 + 0.1
    assert list(timings_of(quiet)) == ["resolve", "fetch", "read", "plan", "guard", "record"]


def test_a_failed_step_is_timed_too():
    async def scenario() -> None:
        times = StepTimings()

        async def slow_failure() -> None:
            await asyncio.sleep(0.02)
            raise RuntimeError("target down")

        with pytest.raises(RuntimeError):
            await times.timed("apply", slow_failure())
        with times.step("guard"):
            pass
        assert times.as_details()["apply"] >= 15 and list(times.as_details()) == ["guard", "apply"]

    asyncio.run(scenario())


def test_timings_read_back_from_json_are_checked():
    assert step_seconds({"timings": {"apply": 250.0, "bad": "x", "neg": -1, "flag": True}}) == [("apply", 0.25)]
    assert step_seconds({"timings": "nonsense"}) == [] and step_seconds({}) == []


def test_the_step_histogram_is_fed_from_the_result(app_env):
    async def scenario() -> str:
        metrics = Metrics()
        result = SyncResult("node", Trigger.WEBHOOK, Result.SYNCED, duration=0.3,
                            details={"timings": {"fetch": 40.0, "apply": 200.0}})
        await MetricsReporter(metrics).finished(None, result, None)  # type: ignore[arg-type]  # app unused
        return metrics.render().decode()

    text = asyncio.run(scenario())
    assert 'autodeployer_sync_step_seconds_count{app="node",step="apply"} 1.0' in text
    assert 'autodeployer_sync_step_seconds_sum{app="node",step="fetch"} 0.04' in text
    assert 'autodeployer_sync_step_seconds_bucket{app="node",le="0.25",step="apply"} 1.0' in text


def test_metrics_expose_a_histogram_per_step(service, app_env, sesam: SesamEmulator):
    running = service({**app_env, "SYNC_INTERVAL": "0.5"})

    def scraped() -> dict[str, float]:
        text = httpx.get(running.url + "/metrics", timeout=5).text
        found = re.findall(r'autodeployer_sync_step_seconds_count\{app="node",step="(\w+)"\} ([0-9.]+)', text)
        return {step: float(n) for step, n in found}

    counts = wait_for(lambda: (c := scraped()).get("verify") and c, timeout=30, what="step histograms")
    assert set(counts) == set(STEPS) and all(n >= 1 for n in counts.values())

    def polls() -> float:  # every poll says how late it started, in one series for all apps
        text = httpx.get(running.url + "/metrics", timeout=5).text
        found = re.search(r"^autodeployer_poll_lateness_seconds_count ([0-9.]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    assert wait_for(lambda: polls() >= 2, timeout=30, what="polls counted in the lateness histogram")

"""Prometheus metrics. One registry per process runtime (no globals), scraped at /metrics.

Counters and histograms are fed by observers (reporter, git, webhook); the app-info and pending
gauges are computed at scrape time from the scheduler and the store, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config.loader import AppConfig
from ..model import CommitInfo, SyncResult, Trigger
from ..timings import step_seconds

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A step is often a few milliseconds (a cached read, the guard): finer buckets at the low end.
# Polls due every few seconds to minutes: late by more than an interval is what matters.
LATENESS_BUCKETS = (0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sync_total = Counter(
            "autodeployer_sync", "Sync attempts by result.", ["app", "result"], registry=self.registry
        )
        self.sync_duration = Histogram(
            "autodeployer_sync_duration_seconds", "Duration of sync attempts.", ["app"],
            buckets=BUCKETS, registry=self.registry,
        )
        self.git_requests = Counter(
            "autodeployer_git_requests", "Requests to Git remotes and the GitHub head API.", ["kind", "result"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "autodeployer_webhook_deliveries", "Webhook deliveries by event and outcome.", ["event", "result"],
            registry=self.registry,
        )
        self.sync_step = Histogram(
            "autodeployer_sync_step_seconds", "Duration of each step of recorded syncs (resolve, fetch, read, plan, "
            "guard, apply, verify, record).", ["app", "step"], buckets=STEP_BUCKETS, registry=self.registry,
        )
        self.poll_lateness = Histogram(
            "autodeployer_poll_lateness_seconds", "How late each poll started after its due time (all apps).",
            buckets=LATENESS_BUCKETS, registry=self.registry,
        )
        self._last_sync: dict[tuple[str, str], float] = {}
        self._git_children: dict[tuple[str, str], Any] = {}  # labels() looked up once per (kind, result)

    # observers ---------------------------------------------------------------------------
    def observe_git(self, kind: str, result: str, seconds: float) -> None:
        """Counted on every poll (a shared head is a "head/shared" count): the labelled child is kept."""
        child = self._git_children.get((kind, result))
        if child is None:
            child = self._git_children[(kind, result)] = self.git_requests.labels(kind, result)
        child.inc()

    def observe_poll_lateness(self, app: str, seconds: float) -> None:
        """One poll started `seconds` after it was due (one series for all apps: 1,000 apps, 1 histogram)."""
        self.poll_lateness.observe(max(0.0, seconds))

    def observe_webhook(self, event: str, result: str) -> None:
        self.webhook_deliveries.labels(event, result).inc()

    def observe_sync(self, result: SyncResult) -> None:
        self.sync_total.labels(result.app, result.result.value).inc()
        self.sync_duration.labels(result.app).observe(result.duration)
        for step, seconds in step_seconds(result.details):
            self.sync_step.labels(result.app, step).observe(seconds)
        self._last_sync[(result.app, result.result.value)] = result.started_at + result.duration

    def last_sync_samples(self) -> Iterable[tuple[tuple[str, str], float]]:
        return list(self._last_sync.items())

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated(Collector):
    """The registry's families without their `_created` samples.

    prometheus_client adds a `<name>_created` series (creation time) to every counter and histogram;
    it doubles the series count and nothing here uses it. The library's switch for this is global
    to the process (`disable_created_metrics()`), so the samples are dropped at exposition instead,
    for this registry only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = family.name + "_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family


class MetricsReporter:
    """Feeds sync results into the metrics (a Reporter for the reconciler)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def started(self, app: AppConfig, revision: str, trigger: Trigger) -> None:
        return None

    async def finished(self, app: AppConfig, result: SyncResult, commit: CommitInfo | None) -> None:
        self._metrics.observe_sync(result)


AppRows = Callable[[], Iterable[dict[str, object]]]
Coordination = Callable[[], tuple[dict[str, int], int]]  # (apps owned per replica, live replicas)


class StateCollector(Collector):
    """Gauges computed at scrape time from live status rows."""

    def __init__(self, metrics: Metrics, rows: AppRows, pending: Callable[[], int],
                 coordination: Coordination | None = None) -> None:
        self._metrics = metrics
        self._rows = rows
        self._pending = pending
        self._coordination = coordination

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily(
            "autodeployer_app_info", "One sample per app; labels say where it stands.",
            labels=["app", "target", "sync_status", "revision"],
        )
        rows = list(self._rows())
        for row in rows:
            info.add_metric(
                [str(row["name"]), str(row["target"]), str(row["status"]), str(row.get("live_revision") or "")], 1
            )
        yield info
        last = GaugeMetricFamily(
            "autodeployer_last_sync_timestamp_seconds", "End of the last sync attempt, by result.",
            labels=["app", "result"],
        )
        for (app, result), value in self._metrics.last_sync_samples():
            last.add_metric([app, result], value)
        yield last
        held = GaugeMetricFamily("autodeployer_app_held", "1 while a sync window or a promotion holds a new "
                                 "revision of the app back (docs/rollout.md), else 0.", labels=["app"])
        for row in rows:
            held.add_metric([str(row["name"])], 1 if row["status"] == "held" else 0)
        yield held
        yield GaugeMetricFamily("autodeployer_pending_syncs", "Apps with a sync waiting to run.", value=self._pending())
        if self._coordination is not None:
            owned, live = self._coordination()
            family = GaugeMetricFamily("autodeployer_owned_apps", "Apps owned (reconciled) by each replica.",
                                       labels=["replica"])
            for replica, count in sorted(owned.items()):
                family.add_metric([replica], count)
            yield family
            yield GaugeMetricFamily("autodeployer_replicas", "Live replicas sharing the apps.", value=live)

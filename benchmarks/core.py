"""Result model and measurement helpers shared by every scenario.

A figure is never a single sample: :class:`Summary` keeps the median with min and max, and every
table cell is rendered from one. Scenarios return a :class:`ScenarioResult`; the report module turns
those into the printed tables and ``BENCHMARKS.md``.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Options:
    """How hard to push: ``quick`` shortens every scenario for a smoke run."""

    quick: bool = False

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


@dataclass(frozen=True)
class Summary:
    """Median, min and max of repeated measurements (n samples)."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        data = sorted(values)
        if not data:
            raise ValueError("no samples")
        return cls(statistics.median(data), data[0], data[-1], len(data))


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): the value at or below which q % of samples lie."""
    data = sorted(values)
    if not data:
        raise ValueError("no samples")
    rank = max(1, -(-len(data) * q // 100))  # ceil without floats
    return data[int(rank) - 1]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])


@dataclass
class TargetCheck:
    """One target of the issue: what was asked, what was measured, and whether it was met."""

    target: str
    measured: str
    met: bool


@dataclass
class ScenarioResult:
    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    checks: list[TargetCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    analysis: list[str] = field(default_factory=list)  # why a missed target was missed
    seconds: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0
    busy_before: float = 0.0  # fraction of all CPUs busy just before the scenario started
    error: str | None = None

    def check(self, target: str, measured: str, met: bool) -> None:
        self.checks.append(TargetCheck(target, measured, met))


Scenario = Callable[[Options], ScenarioResult]


# --------------------------------------------------------------------------- formatting
def ms(seconds: float) -> str:
    value = seconds * 1000
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def fmt_summary(s: Summary, unit: Callable[[float], str] = ms) -> str:
    """``median (min–max)``; a single sample prints alone."""
    if s.n == 1:
        return unit(s.median)
    return f"{unit(s.median)} ({unit(s.low)}–{unit(s.high)})"


def mb(n_bytes: float) -> str:
    """Decimal megabytes, the unit the targets are stated in."""
    return f"{n_bytes / 1e6:,.1f} MB"


def human_bytes(n_bytes: float) -> str:
    if n_bytes >= 1e6:
        return mb(n_bytes)
    if n_bytes >= 1e3:
        return f"{n_bytes / 1e3:,.1f} kB"
    return f"{n_bytes:,.0f} B"


def count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def ratio(x: float) -> str:
    return f"{x:,.0f}×" if x >= 10 else f"{x:.1f}×"


# --------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class CpuSample:
    """CPU seconds of this process (all threads) and of its waited-for children, and wall time."""

    wall: float
    own: float
    children: float

    @classmethod
    def now(cls) -> CpuSample:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(time.perf_counter(), me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime)

    def since(self, start: CpuSample) -> tuple[float, float]:
        """(wall seconds, CPU seconds including children) elapsed since ``start``."""
        return self.wall - start.wall, (self.own - start.own) + (self.children - start.children)


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime+cutime+cstime of a process (fields 14–17 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read().decode()
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def proc_rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of a process."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat), whoever uses them."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(limit: float, threshold: float = 0.25) -> float:
    """Wait (at most ``limit`` seconds) until the machine is mostly idle; returns the last busy fraction.

    Other work on a shared machine inflates every figure; waiting for a quiet moment makes runs
    comparable, and the busy fraction is reported with each scenario either way.
    """
    deadline = time.monotonic() + limit
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = machine_busy(5.0)
    return busy


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll until ``predicate`` is truthy; raise TimeoutError naming ``what`` (bounded, always)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)

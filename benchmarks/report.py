"""Rendering: the machine description, tables for the terminal, and BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .core import ScenarioResult, Table


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    ram_gb: float
    python: str
    git: str
    os: str
    date: str

    def rows(self) -> list[tuple[str, str]]:
        return [("CPU", self.cpu), ("Cores (logical)", str(self.cores)), ("RAM", f"{self.ram_gb:.1f} GB"),
                ("Python", self.python), ("Git", self.git), ("OS", self.os), ("Date (UTC)", self.date)]


def machine() -> Machine:
    return Machine(_cpu_model(), os.cpu_count() or 0, _ram_bytes() / 1e9,
                   f"{platform.python_implementation()} {platform.python_version()}", _git_version(),
                   platform.platform(terse=True),
                   dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _git_version() -> str:
    try:
        done = subprocess.run(["git", "--version"], capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------- terminal
def text_table(table: Table) -> str:
    widths = [max(len(row[i]) for row in [table.columns, *table.rows]) for i in range(len(table.columns))]
    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    out = [table.title, line(table.columns), line(["-" * w for w in widths])]
    out += [line(row) for row in table.rows]
    return "\n".join(out)


def text_result(result: ScenarioResult) -> str:
    out = [f"== {result.title} ({result.seconds:.0f} s; machine {100 * result.busy_before:.0f} % busy before; "
           f"load {result.load_before:.1f} → {result.load_after:.1f})"]
    if result.error:
        out.append(f"FAILED: {result.error}")
    for table in result.tables:
        out += [text_table(table), ""]
    for check in result.checks:
        out.append(f"  [{'met' if check.met else 'MISSED'}] {check.target}: {check.measured}")
    return "\n".join(out)


# --------------------------------------------------------------------------- markdown
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def md_table(columns: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


@dataclass(frozen=True)
class Previous:
    """The targets table of the report a run replaces: the figures it shows beside the new ones."""

    date: str = ""
    figures: dict[tuple[str, str], str] = field(default_factory=dict)  # (scenario, target) -> "measured (met)"

    def figure(self, scenario: str, target: str) -> str:
        return self.figures.get((scenario, target), "(new target)" if self.figures else "")


_DATE = re.compile(r"on (\d{4}-\d{2}-\d{2} \d{2}:\d{2}) UTC")


def previous_report(path: Path) -> Previous:
    """Read the targets of an earlier BENCHMARKS.md (a missing or foreign file gives an empty one)."""
    try:
        text = path.read_text()
    except OSError:
        return Previous()
    found = _DATE.search(text)
    figures: dict[tuple[str, str], str] = {}
    section = text.split("## Targets", 1)[1].split("\n## ", 1)[0] if "## Targets" in text else ""
    for line in section.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) >= 4 and cells[0] not in ("Scenario", "") and not set(cells[0]) <= {"-"}:
            figures[(cells[0], cells[1])] = f"{cells[2]} ({cells[3].replace('**', '')})"
    return Previous(found.group(1) if found else "", figures)


def markdown(results: list[ScenarioResult], host: Machine, command: str, quick: bool,
             previous: Previous | None = None) -> str:
    out = [
        "# Benchmarks",
        "",
        f"Figures from one run of `{command}` on {host.date} UTC, written by the benchmark itself; rerun it rather "
        "than editing this file. Everything runs on loopback: real Git over smart HTTP (`git http-backend`), "
        "`autodeployer run` as a real process, and the Sesam, GitHub and Marathon emulators as real HTTP servers.",
        "",
    ]
    if quick:
        out += ["> **Smoke run (`--quick`)**: fewer repetitions and shorter windows than the published figures.", ""]
    out += [
        "## How to run",
        "",
        "```",
        "./dev bench                      # sets up the virtualenv, then python -m benchmarks",
        "python -m benchmarks             # from the repository root: every scenario (~40 min), rewrites BENCHMARKS.md",
        "python -m benchmarks --quick     # smoke run (~6 min), written to benchmarks/results/",
        "python -m benchmarks --only idle,burst",
        "python -m benchmarks --wait-quiet 5   # on a shared machine: wait up to 5 min for idle CPUs per scenario",
        "```",
        "",
        "Scenarios: `idle`, `latency`, `large`, `burst`, `many`, `marathon`, `scaleout`, `variables`, `previews`, "
        "`sharedhead`, `thousand`, `thousand3`. "
        "A run with `--quick` or `--only` writes `benchmarks/results/BENCHMARKS-partial.md` "
        "instead of this file (or `--output FILE`). Each figure is the median of repeated runs with min and max "
        "(`median (min–max)`); comparisons are measured side by "
        "side in the same run.",
        "",
        "## Machine",
        "",
        md_table(["", ""], [[k, v] for k, v in host.rows()]),
        "",
        "With each scenario: how busy the CPUs were just before it started (all processes, from /proc/stat) and "
        "the 1-minute load average before and after it. Other work on the machine during a run shows there first, "
        "and inflates latencies and wall times; `--wait-quiet MINUTES` waits for an idle moment before each "
        "scenario.",
        "",
        "## Targets",
        "",
        *([f"'Previous run' is what the report this one replaced measured (its run of {previous.date} UTC), "
           "so each figure stands beside the one before it.", ""] if previous and previous.figures else []),
        _targets_table(results, previous or Previous()),
        "",
    ]
    for result in results:
        out += [f"## {result.title}", "",
                f"_{result.seconds:.0f} s; CPUs {100 * result.busy_before:.0f} % busy just before it started; load "
                f"average {result.load_before:.2f} before, {result.load_after:.2f} after._", ""]
        if result.error:
            out += [f"**The scenario failed:** `{result.error}`", ""]
        for table in result.tables:
            out += [f"**{table.title}**", "", md_table(table.columns, table.rows), ""]
        if result.checks:
            out += ["Targets: " + "; ".join(f"{c.target}: {c.measured} ({'met' if c.met else '**missed**'})"
                                            for c in result.checks) + ".", ""]
        out += [f"- {note}" for note in result.notes]
        out.append("")
        if result.analysis:
            out += ["**What stands in the way**", ""] + [f"- {line}" for line in result.analysis] + [""]
    return "\n".join(out).rstrip() + "\n"


def _targets_table(results: list[ScenarioResult], previous: Previous) -> str:
    columns = ["Scenario", "Target", "Measured", "Met"] + (["Previous run"] if previous.figures else [])
    rows = []
    for r in results:
        for c in r.checks:
            row = [r.title, c.target, c.measured, "met" if c.met else "**missed**"]
            rows.append(row + ([previous.figure(r.title, c.target)] if previous.figures else []))
        if r.error:
            rows.append([r.title, "(scenario failed)", r.error, "**error**"] + ([""] if previous.figures else []))
    return md_table(columns, rows)

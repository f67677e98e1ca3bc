"""``python -m benchmarks``: run the scenarios, print their tables, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from . import (
    ROOT,
    burst,
    fleet,
    idle_poll,
    large_config,
    latency,
    many_apps,
    marathon_apps,
    previews,
    scale_out,
    variables,
)
from .core import Options, Scenario, ScenarioResult, wait_for_quiet
from .report import machine, markdown, previous_report, text_result

SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "idle": ("1. Idle poll cost", idle_poll.run),
    "latency": ("2. Push-to-synced latency", latency.run),
    "large": ("3. Large configurations", large_config.run),
    "burst": ("4. Bursts", burst.run),
    "many": ("5. Many apps", many_apps.run),
    "marathon": ("6. Marathon", marathon_apps.run),
    "scaleout": ("7. Scale-out", scale_out.run),
    "variables": ("8. Variables and secrets", variables.run),
    "previews": ("9. Pull-request previews", previews.run),
    "sharedhead": ("10. Shared head checks", fleet.run_shared),
    "thousand": ("11. 1,000 apps in one process", fleet.run_thousand),
    "thousand3": ("12. 1,000 apps on 3 replicas", scale_out.run_thousand),
}
PARTIAL = ROOT / "benchmarks" / "results" / "BENCHMARKS-partial.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shorter windows (smoke run)")
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--wait-quiet", metavar="MINUTES", type=float, default=0.0,
                        help="before each scenario, wait up to this long for the machine to be mostly idle")
    parser.add_argument("--output", metavar="FILE", type=Path,
                        help="where to write the report (default: BENCHMARKS.md for a full run of every scenario)")
    parser.add_argument("--baseline", metavar="FILE", type=Path,
                        help="the earlier report whose figures are shown beside the new ones (default: the file "
                             "being replaced, else BENCHMARKS.md)")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(SCENARIOS)
    unknown = [n for n in args.names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    return args


def run_one(name: str, options: Options, wait_quiet: float) -> ScenarioResult:
    """Run a scenario; a failure is reported as the scenario's result, and the next one still runs."""
    title, scenario = SCENARIOS[name]
    busy = wait_for_quiet(wait_quiet * 60)
    load_before, started = os.getloadavg()[0], time.monotonic()
    try:
        result = scenario(options)
    except Exception as exc:  # a broken scenario must not hide the others' figures
        traceback.print_exc()
        result = ScenarioResult(name, title, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
    result.seconds = time.monotonic() - started
    result.load_before, result.load_after = load_before, os.getloadavg()[0]
    result.busy_before = busy
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(quick=args.quick)
    full = not args.quick and args.names == list(SCENARIOS)
    output: Path = args.output or (ROOT / "BENCHMARKS.md" if full else PARTIAL)
    command = ("python -m benchmarks" + (" --quick" if args.quick else "")
               + (f" --only {args.only}" if args.only else ""))
    host = machine()
    print(f"{host.cpu}, {host.cores} cores, {host.ram_gb:.1f} GB, {host.python}, {host.git}", flush=True)
    results: list[ScenarioResult] = []
    for name in args.names:
        print(f"\n-- running {SCENARIOS[name][0]} ...", flush=True)
        result = run_one(name, options, args.wait_quiet)
        results.append(result)
        print(text_result(result), flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    baseline = args.baseline or (output if output.exists() else ROOT / "BENCHMARKS.md")
    previous = previous_report(baseline)
    output.write_text(markdown(results, host, command, args.quick, previous))
    missed = [c for r in results for c in r.checks if not c.met]
    failed = [r for r in results if r.error]
    print(f"\nwrote {output}; {sum(len(r.checks) for r in results) - len(missed)} target(s) met, "
          f"{len(missed)} missed, {len(failed)} scenario(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

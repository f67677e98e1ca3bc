"""The benchmark report puts each target's previous figure beside the new one (issue 18: "old figures
beside new"), read back from the report it replaces."""

from __future__ import annotations

from pathlib import Path

from benchmarks.core import ScenarioResult
from benchmarks.report import Machine, markdown, previous_report

HOST = Machine("cpu", 2, 24.0, "CPython 3.11", "git 2.39", "Linux", "2026-12-03 17:00")


def result(title: str, *checks: tuple[str, str, bool]) -> ScenarioResult:
    scenario = ScenarioResult(title.split(". ", 1)[-1].lower(), title)
    for target, measured, met in checks:
        scenario.check(target, measured, met)
    return scenario


def test_previous_figures_stand_beside_the_new_ones(tmp_path: Path) -> None:
    old = markdown([result("1. Idle poll cost", ("idle cycle | under 50 ms", "11.3 ms", True)),
                    result("3. Large configurations", ("50,000 entities: peak RSS", "672.4 MB", False))],
                   HOST, "python -m benchmarks", False)
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(old)
    previous = previous_report(path)
    assert previous.date == "2026-12-03 17:00"
    assert previous.figures[("3. Large configurations", "50,000 entities: peak RSS")] == "672.4 MB (missed)"
    assert previous.figures[("1. Idle poll cost", "idle cycle | under 50 ms")] == "11.3 ms (met)"  # escaped pipe

    new = markdown([result("3. Large configurations", ("50,000 entities: peak RSS", "201.0 MB", True),
                           ("a target added since", "1 s", True))], HOST, "python -m benchmarks", False, previous)
    rows = [line for line in new.split("## Targets", 1)[1].splitlines() if line.startswith("| 3.")]
    assert rows == ["| 3. Large configurations | 50,000 entities: peak RSS | 201.0 MB | met | 672.4 MB (missed) |",
                    "| 3. Large configurations | a target added since | 1 s | met | (new target) |"]
    assert "its run of 2026-12-03 17:00 UTC" in new


def test_no_earlier_report_no_column(tmp_path: Path) -> None:
    previous = previous_report(tmp_path / "missing.md")
    idle = result("1. Idle poll cost", ("idle", "1 ms", True))
    text = markdown([idle], HOST, "python -m benchmarks", False, previous)
    assert "| Scenario | Target | Measured | Met |" in text and "Previous run" not in text

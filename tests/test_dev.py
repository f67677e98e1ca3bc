"""`./dev lint` and `./dev test`: lint runs first and a finding stops the tests.

The script runs for real, from a copy in a temporary directory; the tools it calls (ruff, mypy, the venv's
python, dpkg-query) are stand-ins that record their arguments, because the real ones would lint and test
the whole project (minutes, and red whenever any file anywhere has a finding) and the real dpkg-query
could lead to apt-get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("ruff", "mypy", "python")


def stand_in(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def project(tmp_path: Path, failing: tuple[str, ...] = ()) -> Path:
    """A copy of ./dev with a virtualenv whose tools log `<tool> <args>` and fail when listed in `failing`."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(ROOT / "dev", root / "dev")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in TOOLS:
        code = 1 if tool in failing else 0
        stand_in(bin_dir / tool, f'echo "{tool} $*" >> "{tmp_path}/calls"\nexit {code}\n')
    (root / ".venv" / ".installed").touch()  # newer than pyproject.toml: no pip install
    os.utime(root / "pyproject.toml", (0, 0))
    system = tmp_path / "system-bin"
    system.mkdir()
    stand_in(system / "dpkg-query", "echo 'install ok installed'\n")  # every system package present
    return root


def dev(root: Path, *args: str) -> tuple[int, list[str]]:
    env = {**os.environ, "PATH": f"{root.parent / 'system-bin'}:{os.environ['PATH']}"}
    env.pop("AUTODEPLOYER_VENV", None)
    done = subprocess.run([str(root / "dev"), *args], env=env, capture_output=True, text=True, timeout=60)
    calls = root.parent / "calls"
    return done.returncode, calls.read_text().splitlines() if calls.exists() else []


def test_lint_runs_ruff_on_src_tests_benchmarks_then_mypy(tmp_path: Path):
    code, calls = dev(project(tmp_path), "lint")
    assert code == 0
    assert calls == ["ruff check src tests benchmarks", "mypy "]


def test_lint_reports_both_tools_and_fails_when_ruff_finds_something(tmp_path: Path):
    code, calls = dev(project(tmp_path, failing=("ruff",)), "lint")
    assert code != 0
    assert calls == ["ruff check src tests benchmarks", "mypy "]


def test_test_lints_first_then_passes_its_arguments_to_pytest(tmp_path: Path):
    code, calls = dev(project(tmp_path), "test", "-q", "-k", "store")
    assert code == 0
    assert calls == ["ruff check src tests benchmarks", "mypy ", "python -m pytest -q -k store"]


def test_a_lint_finding_stops_the_tests(tmp_path: Path):
    code, calls = dev(project(tmp_path, failing=("mypy",)), "test", "-q")
    assert code != 0
    assert not any(call.startswith("python -m pytest") for call in calls)

"""Reading Git stays independent of the deploy targets: the layering the module map promises."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> list[str]:
    """The autodeployer modules a fresh interpreter has loaded after running `statement`."""
    probe = f"{statement}\nimport sys\nprint('\\n'.join(m for m in sys.modules if m.startswith('autodeployer')))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()


def test_git_source_imports_no_target_and_no_config_model():
    loaded = loaded_after("import autodeployer.sources.git")
    assert "autodeployer.sources.spec" in loaded
    assert [m for m in loaded if m.startswith("autodeployer.targets")] == []
    assert "autodeployer.config.loader" not in loaded

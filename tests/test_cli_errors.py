"""Bad input to every verb: one line naming the cause and the flag or variable, never a traceback."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autodeployer_emulators.sesam import SesamEmulator

from .helpers import free_port, run_cli


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def verbs(env: dict[str, str]) -> set[str]:
    """Every verb `autodeployer --help` lists, hooks' subcommands included."""
    def listed(*args: str) -> list[str]:
        out = run_cli(env, *args, "--help").stdout
        section = out.split("Commands:", 1)[1]
        return re.findall(r"^  (\S+)", section, re.M)

    found = set(listed())
    found.discard("hooks")
    return found | {f"hooks {sub}" for sub in listed("hooks")}


def test_every_verb_with_bad_input_fails_in_one_line(app_env: dict[str, str], tmp_path: Path, busy_port: int):
    closed = f"http://127.0.0.1:{free_port()}"
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    shim = tmp_path / "shim"  # a PostgreSQL driver that cannot be imported, as on a plain install without it
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['psycopg'] = None\n")
    no_driver = {"PYTHONPATH": str(shim), "STORE_URL": "postgresql://deployer@127.0.0.1:1/autodeployer"}
    github_down = {"GITHUB_API_URL": closed, "PUBLIC_URL": "http://127.0.0.1:9"}
    cases: dict[str, tuple[list[str], dict[str, str], str]] = {
        "run": (["run"], no_driver, "STORE_URL"),
        "sync": (["sync"], {"STATE_DIR": str(not_a_dir)}, "STATE_DIR"),
        "diff": (["diff"], {"STATE_DIR": str(not_a_dir)}, "STATE_DIR"),
        "plan": (["plan"], {"STATE_DIR": str(not_a_dir)}, "STATE_DIR"),
        "settings": (["settings", "extra"], {}, "settings --help"),
        "status": (["status", "--server", "localhost:5000"], {}, "--server"),
        "history": (["history", "--server", closed], {}, "--server"),
        "rollback": (["rollback", "--app", "node", "--to", "abc", "--server", closed], {}, "--server"),
        "suspend": (["suspend", "--app", "node", "--server", closed], {}, "--server"),
        "resume": (["resume", "--app", "node", "--server", "127.0.0.1:5000"], {}, "--server"),
        "hooks register": (["hooks", "register"], github_down, "ConnectError"),
        "hooks list": (["hooks", "list"], github_down, "ConnectError"),
        "hooks remove": (["hooks", "remove"], github_down, "ConnectError"),
        "demo": (["demo", "--port", str(busy_port), "--dir", str(tmp_path / "demo")], {}, "--port"),
    }
    assert verbs(app_env) == set(cases)  # a new verb needs its bad-input case here
    for verb, (args, extra, named) in cases.items():
        result = run_cli({**app_env, **extra}, *args)
        output = result.stdout + result.stderr
        assert "Traceback" not in output, f"{verb}:\n{output}"
        assert result.returncode == 2, f"{verb}: exit {result.returncode}\n{output}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], f"{verb}: expected one line naming {named}:\n{output}"
    more = {  # the other bad inputs the issue names
        "sync with STORE_URL and no driver": (["sync"], no_driver, "STORE_URL"),
        "status --server unreachable": (["status", "--server", closed], {}, "--server"),
        "history --server without scheme": (["history", "--server", "localhost"], {}, "--server"),
        "suspend --server without scheme": (["suspend", "--app", "node", "--server", "localhost:1"], {}, "--server"),
        "status --server with a bad port": (["status", "--server", "http://127.0.0.1:50x"], {}, "--server"),
        "demo --port out of range": (["demo", "--port", "99999", "--dir", str(tmp_path / "demo")], {}, "--port"),
        "run with HOST that is not an address": (["run"], {"HOST": "256.1.1.1"}, "PORT"),
    }
    for what, (args, extra, named) in more.items():
        result = run_cli({**app_env, **extra}, *args)
        lines = result.stderr.strip().splitlines()
        assert "Traceback" not in result.stdout + result.stderr, what
        assert result.returncode == 2 and len(lines) == 1 and named in lines[0], f"{what}: {result.stderr}"


def test_run_on_a_busy_port_applies_nothing(app_env: dict[str, str], sesam: SesamEmulator, busy_port: int):
    """The first sync would apply the pending configuration; a busy PORT must stop the start before it."""
    result = run_cli({**app_env, "PORT": str(busy_port), "HOST": "127.0.0.1", "SYNC_INTERVAL": "0.2"}, "run",
                     timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: PORT {busy_port}: cannot listen on 127.0.0.1:{busy_port}: Address already in use"]
    time.sleep(0.5)
    assert sesam.put_count == 0  # nothing applied


def test_port_out_of_range_names_port(app_env: dict[str, str]):
    result = run_cli({**app_env, "PORT": "99999"}, "run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: PORT: expected a port number from 0 to 65535, got 99999"]


def test_sync_that_cannot_reach_its_store_applies_nothing_and_exits_2(app_env: dict[str, str], sesam: SesamEmulator):
    """Exit 0 means "in sync"; "not applied: cannot prove ownership" is not that."""
    result = run_cli({**app_env, "STORE_URL": f"postgresql://deployer@127.0.0.1:{free_port()}/autodeployer"}, "sync")
    assert "Traceback" not in result.stdout + result.stderr
    assert "cannot prove ownership" in result.stdout, result.stdout + result.stderr
    assert ": not applied at " in result.stdout and "no-change" not in result.stdout
    assert result.returncode == 2
    assert sesam.put_count == 0


def test_server_credentials_never_appear_in_errors(app_env: dict[str, str], busy_port: int):
    """A --server URL with user:password in it (a proxy in front of the service) is shown without them."""
    done = run_cli(app_env, "status", "--server", f"http://operator:hunter2-SECRET@127.0.0.1:{busy_port}")
    assert done.returncode == 2
    assert "hunter2-SECRET" not in done.stdout + done.stderr and "operator" not in done.stderr
    assert f"***@127.0.0.1:{busy_port}" in done.stderr

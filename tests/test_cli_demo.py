"""`autodeployer demo` as a subprocess: its banner is enough to use every verb against it."""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .helpers import base_env, free_port, run_cli, wait_for


@contextmanager
def demo(workdir: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "autodeployer", "demo", "--port", str(port), "--dir",
                                 str(workdir), "--interval", "0.5"], env=base_env(), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=40, what="demo ready")
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def exported(log: str) -> dict[str, str]:
    [line] = [line for line in log.splitlines() if line.strip().startswith("export ")]
    return dict(item.split("=", 1) for item in shlex.split(line.strip().removeprefix("export ")))


def test_demo_banner_gives_every_verb_what_it_needs_and_a_second_run_works(tmp_path: Path):
    port, workdir = free_port(), tmp_path / "demo"
    with demo(workdir, port, tmp_path / "demo-1.log"):
        env = base_env(**exported((tmp_path / "demo-1.log").read_text()))
        assert env["JWT"] and env["ADMIN_TOKEN"] and env["SESAM_API_URL"].endswith("/api")
        node = httpx.get(env["SESAM_API_URL"] + "/config", headers={"Authorization": f"Bearer {env['JWT']}"})
        assert node.status_code == 200 and any(e["_id"] == "crm-person" for e in node.json())
        variables = httpx.get(env["SESAM_API_URL"] + "/env", headers={"Authorization": f"Bearer {env['JWT']}"})
        assert variables.json() == {"crm-host": "crm.example.org"}  # the demo's variables file is deployed
        server = f"http://127.0.0.1:{port}"
        assert run_cli(env, "diff").returncode == 0
        assert run_cli(env, "status", "--server", server).returncode == 0
        suspended = run_cli(env, "suspend", "--app", "demo", "--server", server)
        assert suspended.returncode == 0, suspended.stderr
        resumed = run_cli(env, "resume", "--app", "demo", "--server", server)
        assert resumed.returncode == 0, resumed.stderr
    author = subprocess.run(["git", "-C", str(workdir / "work"), "log", "-1", "--format=%an <%ae>"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert author == "autodeployer demo <demo@example.invalid>"

    with demo(workdir, port, tmp_path / "demo-2.log"):  # the same --dir again: reused, not a crash
        pass
    assert "Traceback" not in (tmp_path / "demo-2.log").read_text()


def test_demo_with_a_busy_port_says_so_before_its_banner(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(base_env(), "demo", "--port", str(port), "--dir", str(tmp_path / "demo"))
    assert result.returncode == 2
    assert result.stdout == ""  # no banner
    assert result.stderr.strip().splitlines() == [f"error: --port {port}: cannot listen on 127.0.0.1:{port}: "
                                                  "Address already in use"]
    assert not (tmp_path / "demo").exists()


def test_a_demo_dir_from_an_older_version_without_a_variables_file_still_syncs(tmp_path: Path):
    port, workdir = free_port(), tmp_path / "demo"
    with demo(workdir, port, tmp_path / "demo-1.log"):
        pass
    work = workdir / "work"  # an older demo's seed: no variables file, and no $ENV(...) in its system
    crm = work / "systems" / "crm.conf.json"
    crm.write_text(crm.read_text().replace("$ENV(crm-host)", "crm.example.org"))
    for args in (["rm", "-q", "variables/demo-env.json"], ["commit", "-qam", "as an older demo made it"],
                 ["push", "-q"]):
        subprocess.run(["git", "-C", str(work), *args], check=True, capture_output=True)
    with demo(workdir, port, tmp_path / "demo-2.log"):
        server = f"http://127.0.0.1:{port}"
        state = wait_for(lambda: (a := httpx.get(server + "/api/apps/demo").json()).get("last_result") and a,
                         what="the first sync of the reused demo")
    log = (tmp_path / "demo-2.log").read_text()
    assert state["last_result"] == "synced", log
    assert "VARIABLES_FILE_PATH" not in log.split("sync finished")[0]

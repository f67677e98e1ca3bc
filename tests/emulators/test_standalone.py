"""Each emulator as a stand-alone server: the same flags and the same token-variable naming.

``python -m autodeployer_emulators.<name> --host H --port P`` with the token in
``<NAME>_EMULATOR_TOKEN`` (never in argv), as docs/emulators.md describes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from ..helpers import free_port

TOKEN = "standalone-SECRET-31c0d2"

# name, token variable, authenticated probe (path, headers), expected unauthenticated status
CASES = [
    ("sesam", "SESAM_EMULATOR_TOKEN", "/api/ping", {"Authorization": f"Bearer {TOKEN}"}, 403),
    ("marathon", "MARATHON_EMULATOR_TOKEN", "/v2/apps", {"Authorization": f"token={TOKEN}"}, 401),
    ("github", "GITHUB_EMULATOR_TOKEN", "/user", {"Authorization": f"Bearer {TOKEN}"}, 401),
]


def wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, "the emulator exited"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)


@pytest.mark.parametrize(("name", "variable", "path", "headers", "refused"), CASES,
                         ids=[c[0] for c in CASES])
def test_standalone_flags_and_token_variable(name: str, variable: str, path: str,
                                             headers: dict[str, str], refused: int) -> None:
    port = free_port()
    env = {**os.environ, variable: TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", f"autodeployer_emulators.{name}", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}{path}"
        wait_until_serving(url, process)
        assert httpx.get(url, headers=headers).status_code == 200
        assert httpx.get(url).status_code == refused
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    banner = stderr.decode()
    assert f"127.0.0.1:{port}" in banner and "token required" in banner
    assert TOKEN not in banner

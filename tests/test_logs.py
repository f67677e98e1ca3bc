"""Every line `autodeployer run` writes is in the one format LOG_FORMAT asks for, including the lines of
the libraries it runs (uvicorn's start, stop and error lines, Python warnings)."""

from __future__ import annotations

import json
import re
import socket

import httpx

from .helpers import ALL_SECRETS, WEBHOOK_SECRET, wait_for

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[(debug|info|warning|error|critical) *\] \S")


def exercise(svc) -> None:
    """A request, an error path in uvicorn (a malformed request), a refused webhook, then SIGTERM."""
    assert httpx.get(svc.url + "/api/apps").status_code == 200
    with socket.create_connection(("127.0.0.1", svc.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)  # uvicorn answers 400 and logs "Invalid HTTP request received."
    response = httpx.post(svc.url + "/webhook", content=b"{}",
                          headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64,
                                   "Content-Type": "application/json"})
    assert response.status_code == 401
    wait_for(lambda: "Invalid HTTP request" in svc.log(), what="uvicorn's error line")
    assert svc.stop() == 0


def test_json_mode_writes_only_json_objects(service, app_env, git_server):
    git_server.down()  # the first syncs fail: our error lines, with the git error quoted
    svc = service({**app_env, "LOG_FORMAT": "json", "WEBHOOK_SECRET": WEBHOOK_SECRET, "SYNC_INTERVAL": "0.2",
                   "PYTHONWARNINGS": "always"})
    wait_for(lambda: '"level": "error"' in svc.log() or '"level": "warning"' in svc.log(), what="a failed sync")
    git_server.up()
    exercise(svc)
    lines = svc.log().splitlines()
    events = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON object: {line!r}") from None
        assert isinstance(doc, dict) and {"event", "level", "timestamp"} <= doc.keys(), line
        events.append(doc)
    by_logger = {(d.get("logger"), d["event"].split(" (")[0]) for d in events}
    assert ("uvicorn.error", f"Started server process [{svc.proc.pid}]") in by_logger
    assert any(d["event"] == "listening" and d["url"] == svc.url for d in events)
    assert any(d.get("logger") == "uvicorn.error" and d["event"] == "Invalid HTTP request received."
               and d["level"] == "warning" for d in events)
    assert any(d.get("logger") == "uvicorn.error" and d["event"].startswith("Finished server process")
               for d in events)
    assert any(d["event"] == "autodeployer stopped" for d in events)
    refused = [d for d in events if d["event"] == "webhook delivery" and d.get("result") == "unauthorized"]
    assert len(refused) == 1 and refused[0]["level"] == "warning" and refused[0]["path"] == "/webhook"
    log = svc.log()
    assert "0" * 64 not in log  # the signature that was refused
    for secret in ALL_SECRETS:
        assert secret not in log


def test_text_mode_has_one_layout_for_every_line(service, app_env):
    svc = service({**app_env, "LOG_FORMAT": "text", "WEBHOOK_SECRET": WEBHOOK_SECRET})
    exercise(svc)
    lines = svc.log().splitlines()
    assert len(lines) > 5
    odd = [line for line in lines if not TEXT_LINE.match(line)]
    assert not odd, f"lines in another layout: {odd}"
    assert any("Started server process" in line and line.rstrip().endswith("[uvicorn.error]") for line in lines)
    assert any("listening" in line and svc.url in line for line in lines)
    assert any("Finished server process" in line for line in lines)
    assert any("autodeployer starting" in line for line in lines)

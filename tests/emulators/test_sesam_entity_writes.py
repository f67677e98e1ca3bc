"""The Sesam emulator's per-entity writes as the deployer's per-entity apply uses them (reference:
sesam-api.md section 8), over real HTTP on loopback: what each answers, and that ``put_count`` counts
each of them as one config write."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from autodeployer_emulators.sesam import SesamEmulator

from .test_sesam_emulator import AUTH, MICROSERVICE, PIPE_A, SYSTEM_S, assert_item_shape


@pytest.fixture
def node() -> Iterator[tuple[SesamEmulator, httpx.Client]]:
    emulator = SesamEmulator(jwt=AUTH["Authorization"].split()[-1])
    with emulator.serve() as server, httpx.Client(base_url=server.url + "/api", headers=AUTH, timeout=10) as http:
        yield emulator, http


def test_each_per_entity_write_counts_as_one_config_write(node: tuple[SesamEmulator, httpx.Client]) -> None:
    emu, client = node
    before = emu.put_count
    assert client.post("/systems", json=[SYSTEM_S]).status_code == 201
    assert client.post("/pipes", json=[PIPE_A]).status_code == 201
    assert client.put("/pipes/a/config", json={"type": "pipe", "description": "d"}).status_code == 200
    assert client.delete("/pipes/a").status_code == 200
    assert client.delete("/systems/s").status_code == 200
    assert emu.put_count == before + 5
    # reads, pump operations and secrets are not config writes
    client.get("/pipes")
    client.get("/systems")
    client.put("/secrets", json={"k": "v"})
    assert emu.put_count == before + 5
    assert client.put("/config", json=[PIPE_A]).status_code == 200
    assert emu.put_count == before + 6


def test_the_answers_the_per_entity_apply_relies_on(node: tuple[SesamEmulator, httpx.Client]) -> None:
    emu, client = node
    emu.load([PIPE_A, SYSTEM_S])
    # a change of collection: the node holds a pipe "a", not a system "a" (the apply falls back to replace-all)
    assert client.put("/systems/a/config", json={"type": "system:url", "url_pattern": "x"}).status_code == 404
    # a create of an id that exists: 409
    assert client.post("/systems", json=[SYSTEM_S]).status_code == 409
    # an invalid system: 400 with the validation items of a replace-all refusal, nothing stored
    bad = {**MICROSERVICE, "_id": "zz-ms", "docker": {"image": "busybox:1"}}
    refused = client.post("/systems", json=[bad])
    assert refused.status_code == 400
    item = refused.json()["validation_errors"][0]
    assert_item_shape(item)
    assert item["posted-config"]["_id"] == "zz-ms" and "docker.port" in item["config-errors"][0]["msg"]
    assert "zz-ms" not in {e["_id"] for e in emu.entities()}
    # removing what is gone: 404
    assert client.delete("/pipes/nope").status_code == 404

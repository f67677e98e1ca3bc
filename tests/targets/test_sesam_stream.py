"""Issue 18, target 3: the Sesam no-change cycle compares the node's answer entity by entity with the
desired digests (targets/sesam_live.py) and holds the desired entities as digests (sesam_entities.py).

The whole live list is never built for a no-change cycle, yet the plan is the one the whole-list diff
gave: key order and node keys never count, ``1 == 1.0 == True`` as in Python, a changed entity is shown
as a diff, a live-only entity is removed, unmanaged metadata is carried into the upload. The node's
answer is read over real HTTP (the Sesam emulator, or a tiny loopback app for a broken answer)."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from autodeployer.config.loader import AppConfig, Config, Policy, ServiceSettings
from autodeployer.errors import TargetError
from autodeployer.logs import Redactor
from autodeployer.model import Action, Result, SourceFile, Tree, Trigger
from autodeployer.runtime import build_runtime
from autodeployer.sources.spec import SourceSpec
from autodeployer.targets import sesam as sesam_module
from autodeployer.targets.base import TargetDeps
from autodeployer.targets.sesam import Spec, create, diff, parse_desired, strip_node_keys
from autodeployer.targets.sesam_live import ArrayReader, LiveConfig, entity_digest
from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import GIT_TOKEN, SESAM_JWT


def pipe(i: int, **extra: Any) -> dict[str, Any]:
    return {"_id": f"p{i:04d}", "type": "pipe", "source": {"type": "dataset", "dataset": f"raw-{i % 7}"},
            "sink": {"type": "dataset", "dataset": f"out-{i}", "flags": [1, 2.5, True]}, **extra}


def tree(entities: list[dict[str, Any]], extra: dict[str, bytes] | None = None) -> Tree:
    files = {f"pipes/{e['_id']}.conf.json": json.dumps(e, indent=2).encode() for e in entities}
    files.update(extra or {})
    return Tree(revision="a" * 40, tree_id="b" * 40, sync_root="", files={
        path: SourceFile(path=path, data=data, mode="100644", size=len(data)) for path, data in files.items()})


def reordered(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def live_of(entities: list[Any]) -> LiveConfig:
    return LiveConfig.of(entities, strip_node_keys)


def with_node_keys(entity: dict[str, Any], n: int) -> dict[str, Any]:
    return {**entity, "$audit": {"created_ts": f"~t2024-{n}"}, "_ts": n, "_updated": n, "_hash": f"h{n}"}


N = 2_000


def test_no_change_is_found_without_keeping_the_live_entities() -> None:
    wanted = [pipe(i) for i in range(N)]
    desired = parse_desired(tree(wanted))
    live = live_of([with_node_keys(e, i) for i, e in enumerate(wanted)])
    scan = live.scan(desired.digests)
    assert scan.decoded == N and len(scan.ids) == N and scan.candidates == {}  # one at a time, none kept
    plan = diff(desired, live)
    assert plan.empty and plan.live_count == N and plan.desired_count == N


def test_the_no_change_diff_holds_far_less_than_the_live_list() -> None:
    """Memory, traced: the old way decoded the whole answer into a list of dicts (the `entities()` size)."""
    wanted = [pipe(i) for i in range(N)]
    desired = parse_desired(tree(wanted))
    live = live_of([with_node_keys(e, i) for i, e in enumerate(wanted)])
    tracemalloc.start()
    try:
        whole = [with_node_keys(e, i) for i, e in enumerate(wanted)]  # what the old live() returned
        list_size = tracemalloc.get_traced_memory()[0]
        del whole
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        assert diff(desired, live).empty
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < list_size / 4, (peak, list_size)


def test_one_changed_entity_of_many_is_found_and_shown() -> None:
    wanted = [pipe(i) for i in range(N)]
    desired = parse_desired(tree(wanted))
    live_entities = [dict(e) for e in wanted]
    live_entities[1234] = pipe(1234, description="changed on the node")
    plan = diff(desired, live_of(live_entities))
    assert [(c.action, c.id) for c in plan.changes] == [(Action.CHANGE, "p1234")]
    assert '-  "description": "changed on the node"' in plan.changes[0].diff
    assert len(plan.payload) == N and plan.payload[1234] == wanted[1234]  # the upload: every entity from Git


def test_key_order_and_node_keys_never_count() -> None:
    wanted = [pipe(i) for i in range(50)]
    desired = parse_desired(tree(wanted))
    live = [with_node_keys(reordered(e), i) for i, e in enumerate(wanted)]
    assert diff(desired, live_of(live)).empty
    assert diff(desired, live).empty  # the old list form too


def test_numbers_compare_as_python_does() -> None:
    """Decision: the semantics of the old dict equality are kept exactly. 1, 1.0 and true are equal (a digest
    mismatch only makes the entity a candidate, compared with ==); 1 and 2 are not."""
    git = {"_id": "p", "type": "pipe", "n": 1, "m": 1, "f": 0.0}
    desired = parse_desired(tree([git]))
    same = {"_id": "p", "type": "pipe", "n": 1.0, "m": True, "f": -0.0}
    assert entity_digest(same) != desired.digests["p"]
    assert diff(desired, live_of([same])).empty
    plan = diff(desired, live_of([{**same, "n": 2}]))
    assert [(c.action, c.id) for c in plan.changes] == [(Action.CHANGE, "p")]


def test_a_live_only_entity_is_removed_and_unmanaged_metadata_carried() -> None:
    wanted = [pipe(i) for i in range(20)]
    desired = parse_desired(tree(wanted))
    metadata = {"_id": "node", "type": "metadata", "global_defaults": {"x": 1}}
    stray = {"_id": "stray", "type": "system:url", "url_pattern": "http://x/%s", "_ts": 3}
    plan = diff(desired, live_of([with_node_keys(metadata, 1), *wanted[:10], stray, *wanted[10:]]))
    assert [(c.action, c.id) for c in plan.changes] == [(Action.REMOVE, "stray")]
    assert plan.payload[0] == metadata  # replace-all must not reset metadata that Git does not manage
    assert [e["_id"] for e in plan.payload[1:]] == [e["_id"] for e in wanted]


def test_an_entity_missing_on_the_node_is_added() -> None:
    wanted = [pipe(i) for i in range(20)]
    plan = diff(parse_desired(tree(wanted)), live_of(wanted[:7] + wanted[8:]))
    assert [(c.action, c.id) for c in plan.changes] == [(Action.ADD, "p0007")]


def test_a_new_commit_reuses_the_digests_of_unchanged_files() -> None:
    memo: dict[str, Any] = {}
    wanted = [pipe(i) for i in range(30)]
    first = parse_desired(tree(wanted), memo=memo)
    wanted[3] = pipe(3, description="new")
    second = parse_desired(tree(wanted), memo=memo)
    assert second.digests["p0004"] is first.digests["p0004"]
    assert second.digests["p0003"] != first.digests["p0003"]
    assert second.entities["p0003"]["description"] == "new"  # rebuilt from the file on demand


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_the_answer_is_decoded_across_chunk_boundaries(chunk: int) -> None:
    values = [pipe(i, note="å∂ç ✓ \\ \"q\"", n=12345678901234567890) for i in range(40)] + [17, "x", None]
    data = json.dumps(values, indent=2, ensure_ascii=False).encode()
    got: list[Any] = []
    reader = ArrayReader("http://node/api/config", got.append)
    for start in range(0, len(data), chunk):
        reader.feed(data[start:start + chunk])
    reader.feed(b"", final=True)
    assert got == values


@pytest.mark.parametrize("body", [b"", b"[", b"[1,", b"[1 2]", b"[1]]", b"[1,]", b"[\xff]", b"{}", b'"x"', b"[1] 2"])
def test_anything_but_one_json_array_is_refused(body: bytes) -> None:
    reader = ArrayReader("http://node/api/config", lambda value: None)
    with pytest.raises(TargetError, match=r"^GET http://node/api/config: "):
        for byte in range(len(body)):
            reader.feed(body[byte:byte + 1])
        reader.feed(b"", final=True)


# --------------------------------------------------------------------------- over HTTP
@pytest.fixture
def node() -> Iterator[SesamEmulator]:
    emulator = SesamEmulator(jwt=SESAM_JWT)
    with emulator.serve() as server:
        emulator.api_url = server.url + "/api"  # type: ignore[attr-defined]
        yield emulator


async def _live(api_url: str) -> LiveConfig:
    async with httpx.AsyncClient(trust_env=False) as http:
        target = create(Spec(api_url=api_url, jwt=SecretStr(SESAM_JWT)), TargetDeps(http, Redactor(), Path(".")))
        return await target.live()


def test_the_node_answer_is_read_and_compared_over_http(node: SesamEmulator) -> None:
    wanted = [pipe(i) for i in range(300)]
    node.load(wanted)
    live = asyncio.run(_live(node.api_url))  # type: ignore[attr-defined]
    desired = parse_desired(tree(wanted))
    scan = live.scan(desired.digests)
    assert scan.decoded >= 300 and not any(i.startswith("p") for i in scan.candidates)
    assert diff(desired, live).empty


class BrokenNode:
    """A node whose ``GET /config`` answers 200 with a body that is not a JSON array of entities."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": self.body})


@pytest.mark.parametrize("body", [b'[{"_id": "p", "type": "pipe"}, {"_id": ', b'{"_id": "p"}', b"\xff\xfe[]",
                                  b'[{"_id": "p", "type": "pipe"}] trailing', b"[1 2]"])
def test_an_answer_that_is_not_json_is_refused_naming_the_request(body: bytes) -> None:
    with LoopbackServer(BrokenNode(body)) as server:
        api = server.url + "/api"
        desired = parse_desired(tree([pipe(1)]))
        with pytest.raises(TargetError) as caught:
            diff(desired, asyncio.run(_live(api)))
    assert str(caught.value).startswith(f"GET {api}/config: ")
    assert "not JSON" in str(caught.value) or "JSON array" in str(caught.value)


def test_a_cold_sync_after_drop_caches_reads_and_parses_everything_while_the_node_is_read(
        git_server: Any, config_repo: Any, sesam: SesamEmulator, state_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the 50,000-entity benchmark times as the service's cold sync: after `drop_caches()` (as after a
    restart) a no-change sync parses every config file again, and the node's GET /config was started
    before the first file was parsed (the prefetch), so the two overlap; a sync of the cached tree parses
    nothing."""
    events: list[str] = []
    parse_file, live = sesam_module.parse_file, sesam_module.SesamTarget.live

    def counted_parse(*args: Any) -> Any:
        events.append("parse")
        return parse_file(*args)

    async def counted_live(self: Any) -> Any:
        events.append("live")
        return await live(self)

    monkeypatch.setattr(sesam_module, "parse_file", counted_parse)
    monkeypatch.setattr(sesam_module.SesamTarget, "live", counted_live)
    app = AppConfig(name="node", source=SourceSpec(url=git_server.url_for("acme/config.git"), branch="master",
                                                   token=SecretStr(GIT_TOKEN)),
                    target=Spec(api_url=sesam.api_url, jwt=SecretStr(SESAM_JWT)),  # type: ignore[attr-defined]
                    policy=Policy(interval=3600, drift_interval=0))
    config = Config(service=ServiceSettings(state_dir=state_dir, commit_status=False), apps=[app])

    async def run() -> tuple[list[str], list[str], int]:
        runtime = build_runtime(config)
        try:
            reconciler = runtime.reconcilers["node"]
            first = await reconciler.sync(Trigger.MANUAL)
            assert first.result is Result.SYNCED, first.error
            files = events.count("parse")
            events.clear()
            assert (await reconciler.sync(Trigger.MANUAL)).result is Result.NO_CHANGE
            warm = list(events)
            events.clear()
            reconciler.drop_caches()
            cold = await reconciler.sync(Trigger.MANUAL)
            assert cold.result is Result.NO_CHANGE, cold.error
            return warm, list(events), files
        finally:
            await runtime.aclose()

    warm, cold, files = asyncio.run(run())
    assert files >= 3
    assert warm == ["live"]  # the cached tree and parsed files: only the node is read
    assert cold.count("parse") == files  # every file again, as a restarted process
    assert cold[0] == "live"  # the node's answer was under way before the first file was parsed

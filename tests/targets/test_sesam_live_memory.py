"""Issue 18: the plan path of a large Sesam node holds the live state once, and the node's answer is freed.

The live read runs its decode (and the plan its diff) with the cyclic collector paused; httpx keeps a
response in a reference cycle with its request, so without an explicit young-generation collection the
whole ``GET /config`` body stayed in memory through those steps (at 10,000 entities, 24 MB more peak RSS).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import httpx
from pydantic import SecretStr

from autodeployer.logs import Redactor
from autodeployer.model import SourceFile, Tree
from autodeployer.targets.base import TargetDeps
from autodeployer.targets.sesam import Spec, create, diff, parse_desired, strip_live
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import SESAM_JWT


def _entities(n: int) -> list[dict[str, object]]:
    return [{"_id": f"p{i}", "type": "pipe", "source": {"type": "dataset", "dataset": f"d{i}"}} for i in range(n)]


def _responses_alive() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, httpx.Response))


def test_live_read_leaves_no_http_answer_alive(sesam: SesamEmulator, tmp_path: Path) -> None:
    sesam.load(_entities(200))

    async def read() -> tuple[int, int]:
        async with httpx.AsyncClient(trust_env=False) as http:
            target = create(Spec(api_url=sesam.api_url, jwt=SecretStr(SESAM_JWT)),  # type: ignore[attr-defined]
                            TargetDeps(http, Redactor(), tmp_path))
            gc.collect()
            gc.disable()  # as during the plan's paused steps: only an explicit collection frees cycles
            try:
                live = await target.live()
                return len(live), _responses_alive()
            finally:
                gc.enable()

    count, alive = asyncio.run(read())
    assert count >= 200  # and the node's metadata
    assert alive == 0


def test_diff_of_pre_stripped_live_equals_diff_of_raw_live() -> None:
    files = {}
    for e in _entities(3):
        data = (str(e).replace("'", '"')).encode()
        files[f"pipes/{e['_id']}.conf.json"] = SourceFile(path=f"pipes/{e['_id']}.conf.json", data=data,
                                                          mode="100644", size=len(data))
    desired = parse_desired(Tree(revision="a" * 40, tree_id="b" * 40, files=files, sync_root=""))
    live = [{**e, "$audit": {"who": "x"}, "_ts": 1} for e in _entities(4)]
    live[0]["source"] = {"type": "dataset", "dataset": "changed"}
    raw, pre = diff(desired, live), diff(desired, strip_live(live), stripped=True)
    assert [(c.action, c.id, c.diff) for c in raw.changes] == [(c.action, c.id, c.diff) for c in pre.changes]
    assert [c.id for c in raw.changes] == ["p0", "p3"]
    assert raw.payload == pre.payload and raw.live_count == pre.live_count == 4
    assert all("$audit" not in e for e in strip_live(live)) and "$audit" in live[0]  # a copy: live untouched

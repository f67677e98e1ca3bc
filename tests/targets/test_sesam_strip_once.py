"""Issue 18: the plan of a large Sesam node strips node keys from the live state once (strip_live), not
once in _keep_live and again in diff; both must give exactly the plan they gave from the raw entities."""

from __future__ import annotations

from autodeployer.model import SourceFile, Tree
from autodeployer.targets.sesam import diff, parse_desired, strip_live


def _entities(n: int) -> list[dict[str, object]]:
    return [{"_id": f"p{i}", "type": "pipe", "source": {"type": "dataset", "dataset": f"d{i}"}} for i in range(n)]


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

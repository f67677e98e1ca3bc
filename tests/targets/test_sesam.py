"""Sesam desired state and semantic diff (pure functions), plus property tests."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autodeployer.errors import Refused
from autodeployer.model import Action, SourceFile, Tree
from autodeployer.targets.sesam import diff, parse_desired


def tree(files: dict[str, str | bytes], root: str = "", mode: dict[str, str] | None = None) -> Tree:
    out = {}
    for path, data in files.items():
        raw = data.encode() if isinstance(data, str) else data
        out[path] = SourceFile(path, raw, (mode or {}).get(path, "100644"), len(raw))
    return Tree(revision="a" * 40, tree_id="t" * 40, files=out, sync_root=root)


def refused(files: dict[str, str | bytes], **kwargs) -> str:
    with pytest.raises(Refused) as info:
        parse_desired(tree(files), **kwargs)
    return str(info.value)


PIPE = {"_id": "p", "type": "pipe"}


def test_bom_arrays_nested_and_ignored_files():
    desired = parse_desired(tree({
        "pipes/p.conf.json": b"\xef\xbb\xbf" + json.dumps(PIPE).encode(),
        "pipes/deep/er/q.conf.json": json.dumps({"_id": "q", "type": "pipe"}),
        "systems/all.conf.json": json.dumps([{"_id": "s1", "type": "system:url"}, {"_id": "s2", "type": "system:url"}]),
        "pipes/.gitkeep": "",
        "README.md": "# hi",
        "other/pipes/x.conf.json": "{not even json",
    }))
    assert set(desired.entities) == {"p", "q", "s1", "s2"}
    assert not desired.metadata_managed
    assert "ignored 3 file(s)" in desired.notices[0]


def test_problems_are_all_reported_with_file_and_entity():
    message = refused({
        "pipes/a.conf.json": "{",
        "pipes/b.conf.json": json.dumps({"type": "pipe"}),
        "pipes/c.conf.json": json.dumps({"_id": "c"}),
        "pipes/d.conf.json": json.dumps({"_id": "d", "type": "table"}),
        "pipes/e.conf.json": json.dumps({"_id": "e", "type": "pipe", "x": "$SECRET(pw)"}),
        "pipes/f.conf.json": '{"_id": "f", "type": "pipe", "_id": "g"}',
        "pipes/h.conf.json": b"\xff\xfe",
        "pipes/i.conf.json": "[1, 2]",
        "pipes/j.conf.json": json.dumps({"_id": "a/b", "type": "pipe"}),
        "pipes/k.conf.json": '{"_id": "k", "type": "pipe", "v": NaN}',
    })
    for expected in (
        "pipes/a.conf.json: invalid JSON",
        "pipes/b.conf.json: entity #1 has no _id",
        "pipes/c.conf.json: c: has no type",
        "pipes/d.conf.json: d: type 'table' is not pipe",
        "pipes/e.conf.json: e: $SECRET(...) is only allowed in systems",
        "pipes/f.conf.json: duplicate key '_id'",
        "pipes/h.conf.json: not valid UTF-8",
        "pipes/i.conf.json: entity #1 is not a JSON object",
        "pipes/j.conf.json: a/b: _id must not contain '/'",
        "pipes/k.conf.json: NaN is not valid JSON",
    ):
        assert expected in message


def test_duplicates_symlinks_size_and_depth():
    assert "_id defined twice: in pipes/a.conf.json and in systems/a.conf.json" in refused({
        "pipes/a.conf.json": json.dumps(PIPE | {"_id": "a"}),
        "systems/a.conf.json": json.dumps({"_id": "a", "type": "system:url"}),
    })
    link = tree({"pipes/l.conf.json": "../../etc/passwd"}, mode={"pipes/l.conf.json": "120000"})
    with pytest.raises(Refused, match="symbolic link"):
        parse_desired(link)
    big = Tree("a" * 40, "t", {"pipes/big.conf.json": SourceFile("pipes/big.conf.json", b"", "100644", 100 << 20)})
    with pytest.raises(Refused, match=r"pipes/big\.conf\.json: is 104857600 bytes"):
        parse_desired(big)
    assert "nested too deeply" in refused({"pipes/deep.conf.json": "[" * 100000 + "]" * 100000})


def test_self_id_guard_and_sync_root_in_messages():
    with pytest.raises(Refused, match="watcher: the deployer's own system"):
        parse_desired(tree({"pipes/p.conf.json": json.dumps(PIPE)}), self_id="watcher")
    with pytest.raises(Refused, match=r"node/pipes/x\.conf\.json: invalid JSON"):
        parse_desired(tree({"pipes/x.conf.json": "{"}, root="node"))
    watcher = json.dumps({"_id": "watcher", "type": "system:microservice"})
    ok = parse_desired(tree({"systems/watcher.conf.json": watcher}), self_id="watcher")
    assert "watcher" in ok.entities


def test_diff_ignores_order_formatting_and_node_keys():
    pipe_doc = {"_id": "p", "type": "pipe", "a": {"x": 1, "y": [1, 2]}}
    desired = parse_desired(tree({"pipes/p.conf.json": json.dumps(pipe_doc)}))
    live = [{"a": {"y": [1, 2], "x": 1}, "type": "pipe", "_id": "p", "$audit": {"created_ts": "~t2024"}, "_ts": 5},
            {"_id": "node", "type": "metadata", "x": True}]
    plan = diff(desired, live)
    assert plan.empty
    assert plan.payload[0] == {"_id": "node", "type": "metadata", "x": True}  # unmanaged metadata kept


def test_diff_lists_adds_changes_removes_with_readable_diffs():
    desired = parse_desired(tree({
        "pipes/p.conf.json": json.dumps({"_id": "p", "type": "pipe", "v": 2}),
        "pipes/new.conf.json": json.dumps({"_id": "new", "type": "pipe"}),
        "node-metadata.conf.json": json.dumps({"_id": "node", "type": "metadata", "m": 1}),
    }))
    live = [{"_id": "p", "type": "pipe", "v": 1}, {"_id": "gone", "type": "system:url"},
            {"_id": "node", "type": "metadata"}]
    plan = diff(desired, live)
    assert [(c.action, c.id) for c in plan.changes] == [
        (Action.ADD, "new"), (Action.CHANGE, "node"), (Action.CHANGE, "p"), (Action.REMOVE, "gone")]
    change = plan.changes[2]
    assert '-  "v": 1' in change.diff and '+  "v": 2' in change.diff
    assert plan.summary() == "1 added, 2 changed, 1 removed"


def test_empties_target_flag():
    desired = parse_desired(tree({"node-metadata.conf.json": json.dumps({"_id": "node", "type": "metadata"})}))
    assert diff(desired, [{"_id": "p", "type": "pipe"}, {"_id": "node", "type": "metadata"}]).empties_target
    assert not diff(desired, [{"_id": "node", "type": "metadata"}]).empties_target


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)
entities = st.dictionaries(st.text(min_size=1, max_size=4).filter(lambda s: "/" not in s), json_values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(entities)
def test_diff_of_a_state_against_itself_is_empty(bodies):
    files = {f"pipes/{i}.conf.json": json.dumps({"_id": f"e{i}", "type": "pipe", "body": body})
             for i, body in enumerate(bodies.values())}
    desired = parse_desired(tree(files))
    live = [dict(reversed(list(e.items()))) for e in desired.entities.values()]
    assert diff(desired, live).empty


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parser_never_crashes_on_arbitrary_bytes(data):
    try:
        parse_desired(tree({"pipes/x.conf.json": data}))
    except Refused as exc:
        assert "pipes/x.conf.json" in str(exc)

"""$ENV/$SECRET references, the variables file conventions and the semantic diffs (sesam-api.md
sections 5, 9, 10)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autodeployer.secret_sources import Fingerprinter
from autodeployer.targets.sesam_refs import (
    Ref,
    RefError,
    VariablesError,
    VariablesLocation,
    diff_secrets,
    diff_variables,
    find_refs,
    load_variables,
    missing_secrets,
    missing_variables,
    parse_variables,
    same_value,
    variables_location,
)
from autodeployer_emulators.sesam.state import ENV_REF

PIPE = {
    "_id": "orders",
    "type": "pipe",
    "source": {"type": "sql", "system": "db", "table": "$ENV(schema).$ENV(table)"},
    "transform": {"type": "dtl", "rules": {"default": [["add", "env", "$ENV(stage)"]]}},
    "$conditional_properties": {"condition": "$ENV(mode)", "alternatives": {}},
}
SYSTEM = {
    "_id": "db",
    "type": "system:postgresql",
    "host": "$ENV(db-host)",
    "password": "$SECRET(db-password)",
    "headers": ["x", "token=$SECRET(api_token);"],
}
METADATA = {"_id": "node", "type": "metadata", "global_defaults": {"x": "$ENV(stage)"}}


# ---- references ----------------------------------------------------------------------------


def test_finds_every_reference_in_pipes_systems_metadata() -> None:
    refs = find_refs(PIPE, "pipes/orders.conf.json") + find_refs(SYSTEM, "systems/db.conf.json")
    refs += find_refs(METADATA, "node-metadata.conf.json")
    found = {(r.kind, r.name, r.file, r.entity) for r in refs}
    assert found == {
        ("env", "schema", "pipes/orders.conf.json", "orders"),
        ("env", "table", "pipes/orders.conf.json", "orders"),
        ("env", "stage", "pipes/orders.conf.json", "orders"),
        ("env", "mode", "pipes/orders.conf.json", "orders"),
        ("env", "db-host", "systems/db.conf.json", "db"),
        ("secret", "db-password", "systems/db.conf.json", "db"),
        ("secret", "api_token", "systems/db.conf.json", "db"),
        ("env", "stage", "node-metadata.conf.json", "node"),
    }
    by_name = {r.name: r for r in refs}
    assert by_name["api_token"].path == "$['headers'][1]"
    assert str(by_name["db-host"]) == "systems/db.conf.json: db: $ENV(db-host) at $['host']"


def test_list_document_and_keys_are_not_values() -> None:
    doc = [{"_id": "a", "type": "pipe", "$ENV(key)": 1}, {"_id": "b", "type": "pipe", "x": "$ENV(v)"}]
    refs = find_refs(doc, "pipes/ab.conf.json")
    assert [(r.entity, r.name) for r in refs] == [("b", "v")]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("jdbc://$ENV(host", "$ENV( has no closing parenthesis"),
        ("$ENV($ENV(x))", "$ENV( nests another reference"),
        ("$ENV()", "$ENV( has an empty or spaced name"),
        ("$ENV(a b)", "$ENV( has an empty or spaced name"),
        ("$SECRET(pw", "$SECRET( has no closing parenthesis"),
    ],
)
def test_malformed_reference_names_file_and_entity(value: str, why: str) -> None:
    entity = {"_id": "db", "type": "system:url", "url": value}
    with pytest.raises(RefError) as caught:
        find_refs(entity, "systems/db.conf.json")
    message = str(caught.value)
    assert message.startswith("systems/db.conf.json: db: ") and why in message
    assert "$['url']" in message
    assert caught.value.problems[0].file == "systems/db.conf.json"


def test_secret_outside_a_system_is_refused_and_all_problems_reported() -> None:
    pipe = {"_id": "p", "type": "pipe", "a": "$SECRET(pw)", "b": "$ENV(open"}
    with pytest.raises(RefError) as caught:
        find_refs(pipe, "pipes/p.conf.json")
    texts = [str(p) for p in caught.value.problems]
    assert texts == [
        "pipes/p.conf.json: p: $SECRET(pw) at $['a'] is only allowed in systems",
        "pipes/p.conf.json: p: $ENV( has no closing parenthesis at $['b']: '$ENV(open'",
    ]


def test_entity_without_id_is_labelled_by_position() -> None:
    with pytest.raises(RefError, match=r"x\.conf\.json: entity #2: "):
        find_refs([{"_id": "a", "type": "pipe"}, {"type": "pipe", "x": "$ENV("}], "x.conf.json")


@given(st.text(alphabet="ab$ENV()_- x", max_size=30))
def test_agrees_with_the_node_pattern_on_well_formed_strings(text: str) -> None:
    """Where the walk accepts a string, it finds exactly the names the node would substitute."""
    try:
        refs = find_refs({"_id": "p", "type": "pipe", "v": text}, "f")
    except RefError:
        return
    assert [r.name for r in refs] == ENV_REF.findall(text)


def test_missing_variables_and_secrets() -> None:
    refs = find_refs(PIPE, "pipes/orders.conf.json") + find_refs(SYSTEM, "systems/db.conf.json")
    problems = missing_variables(refs, {"schema", "table", "stage", "db-host"})
    assert [str(p) for p in problems] == [
        (
            "pipes/orders.conf.json: orders: variable 'mode' is not defined "
            "(referenced at $['$conditional_properties']['condition'])"
        )
    ]
    assert [str(p) for p in missing_secrets(refs, {"db-password"})] == [
        "systems/db.conf.json: db: secret 'api_token' is not defined (referenced at $['headers'][1])"
    ]
    assert missing_secrets(refs, {"db-password"}, {"db": ["api_token"]}) == []
    assert missing_secrets(refs, {"db-password"}, {"other": ["api_token"]}) != []


# ---- the variables file --------------------------------------------------------------------


def test_three_conventions_and_the_older_upstream_form() -> None:
    assert variables_location() is None
    assert variables_location(variables_file_path="config/vars.json") == VariablesLocation(
        "config/vars.json", "VARIABLES_FILE_PATH"
    )
    assert variables_location(sync_root="sesam", env_vars_filename="test.json") == (
        VariablesLocation("sesam/env-vars/test.json", "ENV_VARS_FILENAME")
    )
    assert variables_location(profile="prod").path == "prod-env.json"  # type: ignore[union-attr]
    assert variables_location(sync_root="node", environment="prod").path == (  # type: ignore[union-attr]
        "node/variables/variables-prod.json"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variables_file_path": "../x.json"}, "VARIABLES_FILE_PATH: '../x.json' must be a path"),
        ({"variables_file_path": "/etc/passwd"}, "VARIABLES_FILE_PATH: '/etc/passwd' must be"),
        ({"env_vars_filename": "a/b.json"}, "ENV_VARS_FILENAME: 'a/b.json' must be a plain name"),
        ({"env_vars_filename": ".."}, "ENV_VARS_FILENAME: '..' must be a plain name"),
        ({"variables_file_path": "v.json", "env_vars_filename": "v.json"},
         "VARIABLES_FILE_PATH and ENV_VARS_FILENAME are both set"),
    ],
)
def test_bad_locations_name_the_setting(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(VariablesError, match=message.replace("(", r"\(").replace(".", r"\.")):
        variables_location(**kwargs)


def test_parse_keeps_strings_numbers_booleans_and_tolerates_bom() -> None:
    data = b"\xef\xbb\xbf" + json.dumps({"s": "x", "n": 3, "f": 1.5, "b": True}).encode()
    assert parse_variables(data, "v.json") == {"s": "x", "n": 3, "f": 1.5, "b": True}
    assert parse_variables(b"{}", "v.json") == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[1, 2]", "v.json: must be a JSON object of variable names to values, got a list"),
        (b'"text"', "v.json: must be a JSON object of variable names to values, got a string"),
        (b"{oops", "v.json: not valid JSON (Expecting property name enclosed in double quotes"),
        (b'{"a": null}', "v.json: variable 'a' must be a string, number or boolean, got null"),
        (b'{"a": {"b": 1}}', "v.json: variable 'a' must be a string, number or boolean, got object"),
        (b'{"a": [1]}', "v.json: variable 'a' must be a string, number or boolean, got list"),
        (b'{"a": NaN}', "v.json: variable 'a' is not a finite number"),
        (b'{"a": "1", "a": "2"}', "v.json: variable 'a' is defined twice"),
        (b'{" ": "1"}', "v.json: a variable has an empty name"),
        (b"\xff\xfe{}", "v.json: not UTF-8 text"),
    ],
)
def test_parse_refusals_name_the_file(data: bytes, message: str) -> None:
    with pytest.raises(VariablesError) as caught:
        parse_variables(data, "v.json")
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_load_from_a_checkout(tmp_path: Path) -> None:
    (tmp_path / "env-vars").mkdir()
    (tmp_path / "env-vars" / "test.json").write_bytes(b'\xef\xbb\xbf{"stage": "test"}')
    location = variables_location(env_vars_filename="test.json")
    assert location is not None
    assert load_variables(tmp_path, location) == {"stage": "test"}
    missing = variables_location(variables_file_path="nope.json")
    assert missing is not None
    with pytest.raises(VariablesError, match=r"nope.json \(VARIABLES_FILE_PATH\): no such file"):
        load_variables(tmp_path, missing)


def test_load_refuses_a_symlink_out_of_the_repository(tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text('{"x": "y"}')
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(outside, repo / "vars.json")
    location = variables_location(variables_file_path="vars.json")
    assert location is not None
    with pytest.raises(VariablesError, match="resolves outside the repository"):
        load_variables(repo, location)


# ---- diffs ---------------------------------------------------------------------------------


def test_same_value_is_json_equality() -> None:
    assert same_value(1, 1.0) and same_value("a", "a") and same_value(True, True)
    assert not same_value(True, 1) and not same_value(0, False) and not same_value("1", 1)


def test_variables_diff_is_semantic_and_shows_values() -> None:
    live = {"keep": "x", "num": 1, "flag": True, "old": "gone", "typed": 1}
    desired = {"keep": "x", "num": 1.0, "flag": 1, "new": "n", "typed": "1"}
    diff = diff_variables(desired, live)
    assert diff.added == {"new": "n"}
    assert diff.changed == {"flag": (True, 1), "typed": (1, "1")}
    assert diff.removed == {"old": "gone"}
    assert diff.new_names() == {"new"}
    assert diff.lines() == [
        "~ flag: true -> 1",
        "+ new = \"n\"",
        "- old (was \"gone\")",
        "~ typed: 1 -> \"1\"",
    ]
    assert not diff_variables(live, dict(live))


def test_secrets_diff_names_only(tmp_path: Path) -> None:
    fingerprints = Fingerprinter.from_state_dir(tmp_path)
    values = {"a": "value-a", "b": "value-b", "c": "value-c", "d": "value-d"}
    desired = {n: fingerprints.fingerprint(n, v) for n, v in values.items()}
    last_sent = {
        "a": desired["a"],  # unchanged
        "b": fingerprints.fingerprint("b", "old-b"),  # value changed in the source
        "d": desired["d"],  # sent before, but deleted on the node since
    }
    diff = diff_secrets(desired, last_sent, live_names=["a", "b", "c", "jwt"])
    assert diff.added == ("d",)
    assert diff.changed == ("b", "c")  # c: on the node, never sent by the deployer
    assert diff.unchanged == ("a",)
    assert diff.unmanaged == ("jwt",)
    assert diff.to_send == ("b", "c", "d")
    assert diff.lines() == ["b: changed", "c: changed", "d: added"]
    rendered = repr(diff) + "\n".join(diff.lines())
    assert not any(v in rendered for v in values.values())
    # After sending, the next cycle has nothing to do.
    settled = diff_secrets(desired, desired, live_names=["a", "b", "c", "d", "jwt"])
    assert not settled and settled.to_send == ()


def test_ref_is_hashable_and_ordered_by_discovery() -> None:
    refs = find_refs({"_id": "s", "type": "system:x", "a": "$ENV(z)", "b": "$ENV(a)"}, "f")
    assert refs == [Ref("env", "z", "f", "s", "$['a']"), Ref("env", "a", "f", "s", "$['b']")]
    assert len(set(refs)) == 2

"""Section 4 of issue 8: property-based and fuzz tests (hypothesis) of the parsers and the diffs.

The documented outcomes are the only ones allowed: a webhook request ends in a Verdict (an HTTP
status from the documented set), settings in a Config or ConfigError, a tree in a desired state or
Refused. Known defects are excluded from the broad properties with a named `assume` filter and
pinned by their own strict xfail tests (so they flip when fixed, and the filter can go).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route

from autodeployer.config.loader import Config, apps_from_yaml, load_config
from autodeployer.config.variables import parse_bool
from autodeployer.errors import ConfigError, Refused
from autodeployer.model import SourceFile, Tree, Trigger
from autodeployer.targets import sesam as sesam_target
from autodeployer.targets.marathon import desired as marathon_desired
from autodeployer.targets.marathon import diff as marathon_diff
from autodeployer.web.webhook import Verdict, WebhookReceiver, _decode, sign, signature_valid

from ..helpers import WEBHOOK_SECRET

EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "100"))  # raise it for a deeper search
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
DOCUMENTED_STATUSES = {200, 202, 204, 400, 401, 413, 415}

# --------------------------------------------------------------------------- strategies
json_scalars = (st.none() | st.booleans() | st.integers(-(10**12), 10**12)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_/ ", min_size=0, max_size=12)
kinds = st.sampled_from(["pipe", "metadata", "system:url", "system:microservice", "system", "table", "", "Pipe"])
entities = st.fixed_dictionaries({"_id": ids, "type": kinds},
                                 optional={"source": json_values, "x": json_values,
                                           "_updated": json_values, "$audit": json_values})
config_paths = st.sampled_from(["node-metadata.conf.json", "pipes/a.conf.json", "pipes/b.conf.json",
                                "pipes/deep/c.conf.json", "systems/s.conf.json", "systems/t.conf.json",
                                "pipes/../x.conf.json", "pipes/readme.md", "other/z.conf.json"])
file_bodies = (st.binary(max_size=120)
               | st.builds(lambda v: json.dumps(v).encode(), json_values)
               | st.builds(lambda e: json.dumps(e).encode(), entities)
               | st.builds(lambda es: json.dumps(es).encode(), st.lists(entities, max_size=4))
               | st.builds(lambda e: b"\xef\xbb\xbf" + json.dumps(e).encode(), entities))


def tree_of(files: dict[str, bytes], modes: dict[str, str] | None = None, root: str = "") -> Tree:
    modes = modes or {}
    return Tree("c0ffee" * 6 + "abcd", "tree-1",
                {p: SourceFile(p, d, modes.get(p, "100644"), len(d)) for p, d in files.items()}, sync_root=root)


# --------------------------------------------------------------------------- webhook: signature
@FUZZ
@given(secret=st.text(min_size=1, max_size=40), body=st.binary(max_size=300))
def test_genuine_signature_is_always_accepted(secret: str, body: bytes):
    assert signature_valid(sign(secret, body), body, [secret])
    assert signature_valid(sign(secret, body), body, ["another-secret", secret])


@FUZZ
@given(header=st.none() | st.text(max_size=80)
       | st.builds(lambda h: "sha256=" + h, st.text("0123456789abcdefABCDEF", min_size=60, max_size=68)),
       body=st.binary(max_size=200), secret=st.text(min_size=1, max_size=20))
@example(header="sha256=" + "0" * 64, body=b"", secret="s")
def test_any_other_signature_header_is_refused_without_error(header: str | None, body: bytes, secret: str):
    valid = signature_valid(header, body, [secret])
    assert valid is (header == sign(secret, body))


@FUZZ
@given(body=st.binary(min_size=1, max_size=200), flip=st.integers(0, 10**6))
def test_a_changed_body_invalidates_the_signature(body: bytes, flip: int):
    index = flip % len(body)
    changed = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1:]
    assert not signature_valid(sign(WEBHOOK_SECRET, body), changed, [WEBHOOK_SECRET])


# --------------------------------------------------------------------------- webhook: payload
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
                                 "application/x-www-form-urlencoded", "text/plain", "", "multipart/form-data",
                                 "application/json;", " application/json "]) | st.text(max_size=30)


@FUZZ
@given(content_type=content_types,
       body=st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_decode_returns_a_payload_or_a_verdict(content_type: str, body: bytes):
    decoded = _decode(content_type, body)
    assert isinstance(decoded, (dict, Verdict))
    if isinstance(decoded, Verdict):
        assert decoded.status in DOCUMENTED_STATUSES


@FUZZ
@given(payload=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_decode_round_trips_json_and_form_deliveries(payload: dict[str, Any]):
    from urllib.parse import urlencode

    assert _decode("application/json", json.dumps(payload).encode()) == payload
    form = urlencode({"payload": json.dumps(payload)}).encode()
    assert _decode("application/x-www-form-urlencoded", form) == payload


class FakeScheduler:
    """What the receiver needs from the scheduler: who follows what, and a trigger log."""

    def __init__(self) -> None:
        self.triggered: list[tuple[str, Trigger]] = []

    def apps_following(self, repo: str, branch: str) -> list[str]:
        return ["node"] if repo.lower() == "acme/config" and branch == "master" else []

    def trigger(self, app: str, trigger: Trigger, commit: str | None = None) -> bool:
        """As Scheduler.trigger: `commit` is a delivery's guess at the head (only fetched ahead)."""
        self.triggered.append((app, trigger))
        return True


repositories = st.none() | json_values | st.dictionaries(st.sampled_from(["full_name", "id", "name"]),
                                                         st.sampled_from(["acme/config", "ACME/Config", "acme/other",
                                                                          5, None]), max_size=3)
push_payloads = st.fixed_dictionaries({}, optional={
    "ref": st.sampled_from(["refs/heads/master", "refs/heads/feature", "refs/tags/v1", "master", 5, None]),
    "repository": repositories,
    "deleted": st.booleans() | st.none() | st.integers(0, 1),
    "after": st.text(max_size=40),
    "extra": json_values,
})


def receiver() -> tuple[WebhookReceiver, FakeScheduler]:
    scheduler = FakeScheduler()
    return WebhookReceiver([WEBHOOK_SECRET], scheduler), scheduler  # type: ignore[arg-type]


@FUZZ
@given(event=st.sampled_from(["push", "ping", "issues", "", "PUSH"]) | st.text(max_size=10), payload=push_payloads)
@example(event="push", payload={"ref": "refs/heads/master", "repository": {"full_name": "acme/config"}})  # triggers
def test_dispatch_always_ends_in_a_documented_verdict(event: str, payload: dict[str, Any]):
    hook, scheduler = receiver()
    verdict = hook._dispatch(event, payload)
    assert verdict.status in DOCUMENTED_STATUSES
    if scheduler.triggered:  # only a push to the followed branch of the followed repository
        assert event == "push" and verdict.status == 202
        assert payload["ref"] == "refs/heads/master" and not payload.get("deleted")


@FUZZ
@given(payload=st.dictionaries(st.sampled_from(["ref", "repository", "deleted"]), json_values, max_size=3))
@example(payload={"ref": "refs/heads/master", "repository": "acme/config"})
def test_dispatch_accepts_any_json_object_payload(payload: dict[str, Any]):
    hook, _ = receiver()
    assert hook._dispatch("push", payload).status in DOCUMENTED_STATUSES


def webhook_app() -> tuple[Any, FakeScheduler]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's notice about httpx2
        from starlette.testclient import TestClient
    hook, scheduler = receiver()
    app = Starlette(routes=[Route("/webhook", hook.handle, methods=["POST"])])
    return TestClient(app, raise_server_exceptions=False), scheduler


@FUZZ
@given(payload=push_payloads, signed=st.booleans(), header=st.text(max_size=80),
       content_type=content_types, event=st.sampled_from(["push", "ping", "", "issues"]),
       guid=st.sampled_from(["", "g1", "g2"]), raw=st.none() | st.binary(max_size=200))
def test_the_receiver_answers_every_request_with_a_documented_status(payload, signed, header, content_type, event,
                                                                     guid, raw):
    """Whole requests through Starlette: never a 500, and nothing unsigned ever triggers a sync."""
    client, scheduler = webhook_app()
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": content_type, "X-GitHub-Event": event, "X-GitHub-Delivery": guid}
    headers["X-Hub-Signature-256"] = sign(WEBHOOK_SECRET, body) if signed else header
    headers = {k: v for k, v in headers.items() if v.isprintable() and v.isascii()}
    with client:
        response = client.post("/webhook", content=body, headers=headers)
    assert response.status_code in DOCUMENTED_STATUSES, (response.status_code, response.text)
    if not signed:
        assert response.status_code == 401 or headers.get("X-Hub-Signature-256") == sign(WEBHOOK_SECRET, body)
        assert not scheduler.triggered


# --------------------------------------------------------------------------- settings
@FUZZ
@given(value=st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.binary(max_size=5))
def test_parse_bool_returns_a_bool_or_raises_config_error(value: Any):
    try:
        result = parse_bool(value, "X")
    except ConfigError as exc:
        assert "X" in str(exc)
    else:
        assert isinstance(result, bool)


@FUZZ
@given(word=st.sampled_from(["true", "1", "yes", "false", "0", "no"]), case=st.sampled_from([str.upper, str.lower,
                                                                                           str.title]),
       pad=st.sampled_from(["", " ", "\t", "\n "]))
def test_parse_bool_accepts_exactly_the_documented_spellings(word: str, case: Any, pad: str):
    assert parse_bool(pad + case(word) + pad, "X") is (word in ("true", "1", "yes"))


NUMBER_VARIABLES = ("PORT", "SYNC_INTERVAL", "DRIFT_INTERVAL", "GIT_TIMEOUT", "SESAM_TIMEOUT", "NOTIFY_REPEAT")
env_values = st.sampled_from(["", " ", "0", "1", "-1", "0.05", "60", "1e10", "nan", "inf", "-inf", "1e400",
                              "true", "false", "yes", "maybe", "sesam", "marathon", "command", "x" * 30,
                              "http://127.0.0.1:1/a/b.git", "git@github.com:acme/config.git", "/", "../up",
                              "debug", "json", "text", "auto", "api", "git", "Bearer abc.def"]) | st.text(max_size=15)
known_variables = st.sampled_from([
    "GITHUB_TOKEN", "GITHUB_USER", "GITHUB_PROJECT", "BRANCH", "SYNC_ROOT", "GIT_URL", "GITHUB_URL", "GIT_TIMEOUT",
    "APP_NAME", "TARGET", "SYNC_INTERVAL", "DRIFT_INTERVAL", "ALLOW_EMPTY", "DRY_RUN", "VERIFY_TLS", "STATE_DIR",
    "LOG_LEVEL", "LOG_FORMAT", "GITHUB_API_URL", "HEAD_CHECK", "WEBHOOK_SECRET", "PUBLIC_URL", "REGISTER_WEBHOOK",
    "COMMIT_STATUS", "ADMIN_TOKEN", "NOTIFY_URL", "NOTIFY_ON", "NOTIFY_REPEAT", "HOST", "PORT", "JWT",
    "SESAM_API_URL", "SESAM_FORCE", "SELF_ID", "SESAM_TIMEOUT", "MARATHON_URL", "MARATHON_TOKEN", "MARATHON_USER",
    "MARATHON_PASSWORD", "DEPLOY_TIMEOUT", "SPECS_DIR", "PRUNE", "DEPLOY_COMMAND"])


@FUZZ
@given(env=st.dictionaries(known_variables, env_values, max_size=12))
def test_load_config_from_any_environment_gives_a_config_or_config_error(env: dict[str, str]):
    base = {"GIT_URL": "http://127.0.0.1:1/acme/config.git", "JWT": "jwt-value-123", "STATE_DIR": "/tmp/x"}
    environ = {**base, **env}
    try:
        config = load_config(environ)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(config, Config) and config.apps


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
@pytest.mark.parametrize("name", ["PORT", "SYNC_INTERVAL", "GIT_TIMEOUT", "SESAM_TIMEOUT"])
def test_non_finite_numbers_are_config_errors(name: str, value: str):
    """Fixed defect: settings.EnvReader.number took 'inf' (PORT=inf then crashed with OverflowError,
    SYNC_INTERVAL=inf etc. were taken)."""
    environ = {"GIT_URL": "http://127.0.0.1:1/acme/config.git", "JWT": "jwt-value-123", "STATE_DIR": "/tmp/x",
               name: value}
    with pytest.raises(ConfigError, match=name):
        load_config(environ)


yaml_scalars = st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12)
yaml_keys = st.text(max_size=10) | st.integers(-1, 2) | st.none() | st.booleans()  # YAML keys need not be strings
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(yaml_keys, inner, max_size=4), max_leaves=12)
sources = st.fixed_dictionaries({}, optional={
    "url": (st.sampled_from(["http://127.0.0.1:1/acme/config.git", "https://x:tok@github.com/a/b.git", ""])
            | yaml_values),
    "branch": yaml_values, "sync_root": yaml_values, "token": yaml_values, "token_env": yaml_values,
    "github_user": yaml_values, "github_project": yaml_values, "head_check": yaml_values})
targets = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["sesam", "marathon", "command", "other"]) | yaml_values, "jwt": yaml_values,
    "jwt_env": yaml_values, "api_url": yaml_values, "url": yaml_values, "self_id": yaml_values,
    "timeout": yaml_values, "force": yaml_values, "command": yaml_values})
apps = st.fixed_dictionaries({}, optional={"name": st.sampled_from(["a", "b", "bad name", ""]) | yaml_values,
                                           "source": sources | yaml_values, "target": targets | yaml_values,
                                           "policy": st.dictionaries(st.sampled_from(["interval", "allow_empty",
                                                                                      "dry_run", "other"]),
                                                                     yaml_values, max_size=3) | yaml_values})
yaml_docs = st.fixed_dictionaries({}, optional={"apps": st.lists(apps, max_size=3) | yaml_values,
                                                "defaults": st.dictionaries(st.sampled_from(["policy", "target"]),
                                                                            yaml_values, max_size=2) | yaml_values})


@FUZZ
@given(doc=yaml_docs)
def test_yaml_apps_give_apps_or_config_error(doc: dict[str, Any]):
    try:
        found = apps_from_yaml(doc, {"TOKEN": "t0ken-value"})
    except ConfigError as exc:
        assert str(exc)
    else:
        assert found and all(app.name for app in found)


@pytest.mark.parametrize("doc", [
    {"apps": [{"name": "a", "source": {"url": "http://h/a/b.git"}, "target": {"jwt": "j" * 8}, "policy": [1, 2]}]},
    {"defaults": "x", "apps": [{"name": "a"}]},
    {"defaults": [1], "apps": [{"name": "a"}]},
    {"apps": [{"name": "a", "source": {"url": "http://h/a/b.git", 1: 2}, "target": {"jwt": "j" * 8}}]},
], ids=["policy is a list", "defaults is a string", "defaults is a list", "a key that is not a string"])
def test_yaml_shape_errors_are_config_errors(doc: dict[str, Any]):
    """Fixed defect: apps_from_yaml raised TypeError/AttributeError for these; the error names the key."""
    with pytest.raises(ConfigError, match=r"^(apps\[a\]\.(policy|source)|defaults): "):
        apps_from_yaml(doc, {})


@FUZZ
@given(text=st.text(max_size=200) | st.sampled_from([
    "apps: []", "apps: [1]", "service: [1]", "service: {port: abc}\napps: [{name: a}]", "- a\n- b", "a: [",
    "service: {state_dir: 5}\napps: [{name: a, source: {url: 'http://h/a/b.git'}, target: {jwt: jjjjjjjj}}]",
    "service: {1: 2}\napps: [{name: a, source: {url: 'http://h/a/b.git'}, target: {jwt: jjjjjjjj}}]"]))
def test_any_yaml_file_gives_a_config_or_config_error(text: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "apps.yaml"
        path.write_text(text)
        try:
            load_config({"STATE_DIR": tmp}, config_file=path)
        except ConfigError as exc:
            assert str(exc)


@pytest.mark.parametrize("service", ["{state_dir: 5}", "{1: 2}"])
def test_yaml_service_shape_errors_are_config_errors(service: str, tmp_path: Path):
    """Fixed defect: load_config crashed on a non-string 'service' key or state_dir (AttributeError/TypeError)."""
    path = tmp_path / "apps.yaml"
    path.write_text(f"service: {service}\napps: [{{name: a, source: {{url: 'http://h/a/b.git'}}, "
                    "target: {jwt: jjjjjjjj}}]\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: service(\.state_dir)?: "):  # file, then key
        load_config({}, config_file=path)  # no STATE_DIR variable: the YAML's service keys apply


# --------------------------------------------------------------------------- Sesam desired state and diff
@FUZZ
@given(files=st.dictionaries(config_paths, file_bodies, max_size=6), links=st.sets(config_paths, max_size=1),
       self_id=st.none() | st.sampled_from(["s", "a", "autodeployer"]))
def test_sesam_parser_gives_a_desired_state_or_refused(files: dict[str, bytes], links: set[str], self_id: str | None):
    tree = tree_of(files, {p: "120000" for p in links}, root="node")
    try:
        desired = sesam_target.parse_desired(tree, self_id)
    except Refused as exc:
        assert exc.problems and all(p.file or p.entity or "metadata" in p.message for p in exc.problems)
        return
    assert all(isinstance(e, dict) and e["_id"] for e in desired.entities.values())
    assert set(desired.entities) == set(desired.files)


def valid_entities() -> st.SearchStrategy[list[dict[str, Any]]]:
    entity = st.fixed_dictionaries({"_id": st.text("abcdefghij-_", min_size=1, max_size=8),
                                    "type": st.sampled_from(["pipe", "system:url", "system:microservice"])},
                                   optional={"source": json_values, "x": json_values})
    return st.lists(entity, max_size=8, unique_by=lambda e: e["_id"])


def desired_of(bodies: list[dict[str, Any]], metadata: dict[str, Any] | None = None) -> sesam_target.DesiredConfig:
    files = {f"pipes/{i}.conf.json": json.dumps(e).encode() for i, e in enumerate(bodies)}
    if metadata is not None:
        files["node-metadata.conf.json"] = json.dumps(metadata).encode()
    return sesam_target.parse_desired(tree_of(files))


def shuffled(entity: dict[str, Any], seed: int) -> dict[str, Any]:
    """The same entity with keys in another order, recursively."""
    if not isinstance(entity, dict):
        return entity
    keys = sorted(entity, key=lambda k: hash((k, seed)))
    return {k: shuffled(entity[k], seed) for k in keys}


@FUZZ
@given(bodies=valid_entities(), metadata=st.none() | st.just({"_id": "node", "type": "metadata", "x": 1}),
       seed=st.integers(0, 1000), node_keys=st.booleans())
def test_sesam_diff_of_a_state_against_itself_is_empty(bodies, metadata, seed, node_keys):
    desired = desired_of(bodies, metadata)
    live = [shuffled(e, seed) for e in desired.entities.values()]
    if node_keys:  # what the node adds when it stores an entity
        live = [{**e, "$audit": {"by": "x"}, "_updated": 1, "_ts": 2} for e in live]
    if metadata is None:
        live.append({"_id": "node", "type": "metadata", "keep": True})  # unmanaged, carried over
    plan = sesam_target.diff(desired, live)
    assert plan.empty, plan.render()
    assert not plan.empties_target
    # what apply would upload is itself a state with nothing to change
    assert sesam_target.diff(desired, plan.payload).empty


@FUZZ
@given(bodies=valid_entities(), others=valid_entities())
def test_sesam_diff_then_apply_converges(bodies, others):
    desired = desired_of(bodies)
    plan = sesam_target.diff(desired, others)
    assert {c.id for c in plan.changes} <= set(desired.entities) | {e["_id"] for e in others}
    assert sesam_target.diff(desired, plan.payload).empty


# --------------------------------------------------------------------------- Marathon
marathon_ids = st.sampled_from(["web", "/web", "api", "db", "/shop", "shop/api", "../x", "Web_App!", "", "/", "a.b",
                                "-x", "x-", 5, None])
marathon_apps = st.fixed_dictionaries({"id": marathon_ids}, optional={
    "cmd": st.text(max_size=10), "instances": st.integers(0, 3) | st.text(max_size=3),
    "labels": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2) | json_values,
    "env": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    "dependencies": st.lists(marathon_ids, max_size=2) | json_values, "version": st.text(max_size=5)})
marathon_groups = st.fixed_dictionaries({"id": marathon_ids}, optional={
    "apps": st.lists(marathon_apps, max_size=3) | json_values, "groups": st.lists(st.fixed_dictionaries(
        {"id": marathon_ids}, optional={"apps": st.lists(marathon_apps, max_size=2)}), max_size=2),
    "dependencies": st.lists(marathon_ids, max_size=2) | json_values})
spec_bodies = (st.builds(lambda a: json.dumps(a).encode(), marathon_apps)
               | st.builds(lambda g: json.dumps(g).encode(), marathon_groups)
               | st.builds(lambda v: json.dumps(v).encode(), json_values) | st.binary(max_size=60))
spec_paths = st.sampled_from(["specs/a.json", "specs/b.json", "specs/c.json", "specs/sub/d.json", "specs/e.txt",
                              "other.json"])


@FUZZ
@given(files=st.dictionaries(spec_paths, spec_bodies, max_size=4))
def test_marathon_parser_gives_a_desired_state_or_refused(files: dict[str, bytes]):
    try:
        desired = marathon_desired.parse_desired(tree_of(files), "specs", "shop")
    except Refused as exc:
        assert exc.problems and all(p.file or p.entity for p in exc.problems)
        return
    for app_id, app in desired.apps.items():
        assert app_id.startswith("/") and app.spec["labels"]["DPLOY"] == "shop"


valid_ids = st.sampled_from(["web", "api", "db", "worker", "a.b", "x-1"])
valid_apps = st.fixed_dictionaries({"id": valid_ids}, optional={
    "cmd": st.text(max_size=10), "instances": st.integers(0, 3), "cpus": st.floats(0.1, 4),
    "labels": st.dictionaries(st.text("abc", min_size=1, max_size=3), st.text(max_size=4), max_size=2),
    "env": st.dictionaries(st.text("XYZ", min_size=1, max_size=3), st.text(max_size=4), max_size=2),
    "upgradeStrategy": st.fixed_dictionaries({"minimumHealthCapacity": st.floats(0, 1)}),
    "healthChecks": st.lists(st.fixed_dictionaries({"protocol": st.just("COMMAND")}), max_size=1)})
valid_groups = st.fixed_dictionaries({"id": st.sampled_from(["/shop", "/shop/inner", "/data"]),
                                      "apps": st.lists(valid_apps, max_size=3)},
                                     optional={"dependencies": st.lists(st.sampled_from(["/data", "/shop"]),
                                                                        max_size=2)})


@FUZZ
@given(files=st.dictionaries(st.sampled_from(["specs/a.json", "specs/b.json", "specs/c.json"]),
                             st.builds(lambda a: json.dumps(a).encode(), valid_apps | valid_groups), max_size=3),
       runtime=st.booleans())
def test_marathon_diff_of_a_state_against_itself_is_empty(files: dict[str, bytes], runtime: bool):
    try:
        desired = marathon_desired.parse_desired(tree_of(files), "specs", "shop")
    except Refused:
        assume(False)  # ids clashing between files: the parser's business, not the diff's
    apps = {i: {**a.spec, **({"version": "2024", "tasksRunning": 1, "deployments": []} if runtime else {})}
            for i, a in desired.apps.items()}
    groups = {i: list(g.dependencies) for i, g in desired.groups.items() if g.dependencies is not None}
    live = marathon_diff.Live(managed=dict(apps), apps=dict(apps), groups=groups)
    plan = marathon_diff.diff(desired, live, None, prune=True, app_name="shop")
    assert plan.empty, plan.render()
    memory = plan.payload.memory()
    assert marathon_diff.diff(desired, live, memory, prune=True, app_name="shop").empty

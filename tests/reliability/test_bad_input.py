"""Section 2 of issue 8: a corpus of bad commits, pushed into a real repository.

One long-running service follows the repository; each case is committed and pushed on top of the
good configuration, then a sync is asked for through the admin API (so backoff after a refusal does
not slow the corpus down), and the case's history row is checked: refused, the reason names the
file, the node untouched (no upload, same state), the service still answering. A few cases also go
through `autodeployer sync` (exit code 2), and Marathon specs through the Marathon emulator.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from autodeployer_emulators.gitserver import GitHttpServer, WorkRepo
from autodeployer_emulators.marathon import MarathonEmulator
from autodeployer_emulators.sesam import SesamEmulator

from ..helpers import (
    ADMIN_TOKEN,
    MARATHON_TOKEN,
    base_env,
    entity_json,
    history_rows,
    pipe,
    run_cli,
    stripped,
    system,
    wait_for,
)
from .support import check_no_leaks

ROOT = "node"  # SYNC_ROOT of the corpus repository
P, S = f"{ROOT}/pipes", f"{ROOT}/systems"
SELF_ID = "autodeployer"
BOM = b"\xef\xbb\xbf"
BIG = 100 * 1024 * 1024


def good_files() -> dict[str, str | bytes | None]:
    return {
        f"{P}/orders.conf.json": entity_json(pipe("orders")),
        f"{P}/customers.conf.json": entity_json(pipe("customers", dataset="crm")),
        f"{S}/crm.conf.json": entity_json(system("crm")),
        f"{S}/erp.conf.json": entity_json(system("erp")),
        f"{S}/{SELF_ID}.conf.json": entity_json(system(SELF_ID, url="http://autodeployer:5000/%s")),
        f"{ROOT}/node-metadata.conf.json": entity_json({"_id": "node", "type": "metadata"}),
        "outside.conf.json": entity_json(pipe("outside")),
        "README.md": "corpus\n",
    }


@dataclass
class Case:
    """One bad commit: files to write (None deletes), what the refusal must name, or a custom edit."""

    name: str
    files: dict[str, str | bytes | None] = field(default_factory=dict)
    names: str = ""  # text the reason must contain (the file, or the entity/setting at fault)
    expect: str = "refused"
    edit: Callable[[WorkRepo], None] | None = None  # for symlinks and Git plumbing
    defect: str = ""  # a known defect in the reason text: checked by its own xfail test instead

    def touched(self) -> list[str]:
        return list(self.files)


def j(value: Any) -> str:
    return json.dumps(value)


def big_file(repo: WorkRepo, rel: str) -> None:
    """Stream 100 MiB of valid JSON into the work tree (one pipe with a huge padding string)."""
    path = repo.work_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    head = b'{"_id": "huge", "type": "pipe", "padding": "'
    tail = b'"}\n'
    chunk = b"x" * (1 << 20)
    with open(path, "wb") as handle:
        handle.write(head)
        remaining = BIG - len(head) - len(tail)
        while remaining > 0:
            handle.write(chunk[: min(len(chunk), remaining)])
            remaining -= len(chunk)
        handle.write(tail)


def dotdot_commit(repo: WorkRepo) -> None:
    """Commit a tree holding node/pipes/../evil.conf.json with Git plumbing (a work tree cannot).

    git mktree, commit-tree, push and fetch all accept a '..' entry (git 2.39, no fsck on these
    repositories; GitHub's push fsck would refuse it). The index keeps the sane tree, so the next
    ordinary commit removes the entry again.
    """
    git = repo.git
    evil = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo.work_dir, check=True, capture_output=True,
                          input=entity_json(pipe("evil")).encode()).stdout.decode().strip()

    def mktree(lines: str) -> str:
        return subprocess.run(["git", "mktree"], cwd=repo.work_dir, input=lines.encode(), check=True,
                              capture_output=True).stdout.decode().strip()

    inner = mktree(f"100644 blob {evil}\tevil.conf.json\n")
    pipes = mktree(git("ls-tree", f"HEAD:{P}") + f"\n040000 tree {inner}\t..\n")
    node = mktree("\n".join(line for line in git("ls-tree", f"HEAD:{ROOT}").splitlines()
                            if not line.endswith("\tpipes")) + f"\n040000 tree {pipes}\tpipes\n")
    root = mktree("\n".join(line for line in git("ls-tree", "HEAD").splitlines()
                            if not line.endswith(f"\t{ROOT}")) + f"\n040000 tree {node}\t{ROOT}\n")
    sha = git("commit-tree", root, "-p", "HEAD", "-m", "a path with ..")
    git("update-ref", f"refs/heads/{repo.branch}", sha)
    assert "../evil.conf.json" in git("ls-tree", "-r", "--name-only", "HEAD")


def corpus() -> list[Case]:
    orders = entity_json(pipe("orders"))
    return [
        Case("invalid JSON", {f"{P}/bad.conf.json": '{"_id": "bad", "type": "pipe",, }'}, f"{P}/bad.conf.json"),
        Case("truncated file", {f"{P}/orders.conf.json": orders[: len(orders) // 2]}, f"{P}/orders.conf.json"),
        Case("empty file", {f"{P}/empty.conf.json": ""}, f"{P}/empty.conf.json"),
        Case("whitespace only", {f"{P}/blank.conf.json": "  \n\t\n"}, f"{P}/blank.conf.json"),
        Case("trailing garbage", {f"{P}/tg.conf.json": j(pipe("tg")) + ' {"x": 1}'}, f"{P}/tg.conf.json"),
        Case("JSON with comments", {f"{P}/c.conf.json": "// note\n" + j(pipe("c"))}, f"{P}/c.conf.json"),
        Case("raw control character", {f"{P}/ctl.conf.json": '{"_id": "ctl\x01", "type": "pipe"}'},
             f"{P}/ctl.conf.json"),
        Case("duplicate ids across files", {f"{P}/orders-copy.conf.json": orders}, f"{P}/orders.conf.json"),
        Case("duplicate ids in one file", {f"{P}/twins.conf.json": j([pipe("twin"), pipe("twin")])},
             f"{P}/twins.conf.json"),
        Case("pipe id equal to a system id", {f"{P}/crm.conf.json": j(pipe("crm"))}, f"{S}/crm.conf.json"),
        Case("missing _id", {f"{P}/noid.conf.json": j({"type": "pipe"})}, f"{P}/noid.conf.json"),
        Case("empty _id", {f"{P}/e.conf.json": j({"_id": "", "type": "pipe"})}, f"{P}/e.conf.json"),
        Case("blank _id", {f"{P}/sp.conf.json": j({"_id": "   ", "type": "pipe"})}, f"{P}/sp.conf.json"),
        Case("numeric _id", {f"{P}/n.conf.json": j({"_id": 42, "type": "pipe"})}, f"{P}/n.conf.json"),
        Case("missing type", {f"{P}/nt.conf.json": j({"_id": "nt"})}, f"{P}/nt.conf.json"),
        Case("type not a string", {f"{P}/t5.conf.json": j({"_id": "t5", "type": 5})}, f"{P}/t5.conf.json"),
        Case("type table", {f"{P}/tbl.conf.json": j({"_id": "tbl", "type": "table"})}, f"{P}/tbl.conf.json"),
        Case("type system without kind", {f"{S}/sys.conf.json": j({"_id": "sys", "type": "system"})},
             f"{S}/sys.conf.json"),
        Case("top-level number", {f"{P}/num.conf.json": "42"}, f"{P}/num.conf.json"),
        Case("top-level string", {f"{P}/str.conf.json": '"pipe"'}, f"{P}/str.conf.json"),
        Case("top-level null", {f"{P}/null.conf.json": "null"}, f"{P}/null.conf.json"),
        Case("array with a string in it", {f"{P}/mix.conf.json": j([pipe("mix"), "oops"])}, f"{P}/mix.conf.json"),
        Case("array with null", {f"{P}/an.conf.json": "[null]"}, f"{P}/an.conf.json"),
        Case("array of arrays", {f"{P}/aa.conf.json": j([[pipe("aa")]])}, f"{P}/aa.conf.json"),
        Case("non-UTF-8 bytes", {f"{P}/latin1.conf.json": '{"_id": "café", "type": "pipe"}'.encode("latin-1")},
             f"{P}/latin1.conf.json"),
        Case("UTF-16 file", {f"{P}/u16.conf.json": j(pipe("u16")).encode("utf-16")}, f"{P}/u16.conf.json"),
        Case("NaN", {f"{P}/nan.conf.json": '{"_id": "nan", "type": "pipe", "x": NaN}'}, f"{P}/nan.conf.json"),
        Case("-Infinity", {f"{P}/inf.conf.json": '{"_id": "inf", "type": "pipe", "x": -Infinity}'},
             f"{P}/inf.conf.json"),
        Case("duplicate keys", {f"{P}/dk.conf.json": '{"_id": "dk", "type": "pipe", "type": "pipe"}'},
             f"{P}/dk.conf.json"),
        Case("deeply nested JSON (100,000 levels)",
             {f"{P}/deep.conf.json": '{"_id": "deep", "type": "pipe", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"},
             f"{P}/deep.conf.json"),
        Case("$SECRET in a pipe",
             {f"{P}/sec.conf.json": j(pipe("sec", source={"type": "http", "url": "$SECRET(token)"}))},
             f"{P}/sec.conf.json"),
        Case("id with /", {f"{P}/slash.conf.json": j(pipe("a/b"))}, f"{P}/slash.conf.json"),
        Case("pipe in the metadata file", {f"{ROOT}/node-metadata.conf.json": j(pipe("meta"))},
             f"{ROOT}/node-metadata.conf.json"),
        Case("two metadata entities", {f"{P}/meta2.conf.json": j({"_id": "node2", "type": "metadata"})},
             f"{P}/meta2.conf.json"),
        Case("symlink pointing outside SYNC_ROOT", {f"{P}/link.conf.json": None}, f"{P}/link.conf.json",
             edit=lambda repo: repo.symlink(f"{P}/link.conf.json", "../../outside.conf.json")),
        Case("absolute symlink", {f"{S}/passwd.conf.json": None}, f"{S}/passwd.conf.json",
             edit=lambda repo: repo.symlink(f"{S}/passwd.conf.json", "/etc/passwd")),
        Case("file name with ..", {}, f"{P}/../evil.conf.json", edit=dotdot_commit),
        Case("missing self entry (SELF_ID)", {f"{S}/{SELF_ID}.conf.json": None}, "SELF_ID"),
        Case("self entry is not a system", {f"{S}/{SELF_ID}.conf.json": j(pipe(SELF_ID))}, "SELF_ID"),
        Case("SYNC_ROOT deleted", {path: None for path in good_files() if path.startswith(ROOT + "/")},
             f"SYNC_ROOT '{ROOT}' does not exist"),
        Case("SYNC_ROOT is a file", {ROOT: None}, f"SYNC_ROOT '{ROOT}' does not exist",
             edit=lambda repo: (repo.write({ROOT: None}), repo.write({ROOT: "not a directory\n"}))),
        Case("100 MiB file", {f"{P}/huge.conf.json": None}, f"{P}/huge.conf.json",
             edit=lambda repo: big_file(repo, f"{P}/huge.conf.json")),
        Case("file with a UTF-8 BOM (accepted)", {f"{P}/bom.conf.json": BOM + j(pipe("bom")).encode()}, "",
             expect="synced"),
    ]


# --------------------------------------------------------------------------- the service corpus
@pytest.fixture
def corpus_repo(tmp_path: Path) -> WorkRepo:
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "corpus.git", tmp_path / "work-corpus")
    repo.write(good_files())
    repo.commit("good configuration")
    repo.push()
    return repo


def trigger(base_url: str) -> None:
    response = httpx.post(f"{base_url}/api/apps/node/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 202, response.text


def row_for(state_dir: Path, sha: str) -> Any:
    rows = [r for r in history_rows(state_dir) if r["revision"] == sha and r["result"] != "running"]
    return rows[-1] if rows else None


def reason(row: Any) -> str:
    return (row["error"] or "") + "\n" + "\n".join(json.loads(row["problems"]))


def test_bad_commit_corpus_is_refused_and_the_node_untouched(service, rel_env, git_server: GitHttpServer,
                                                             corpus_repo: WorkRepo, sesam: SesamEmulator,
                                                             state_dir: Path, results):
    env = {**rel_env, "GIT_URL": git_server.url_for("acme/corpus.git"), "SYNC_ROOT": ROOT, "SELF_ID": SELF_ID,
           "SYNC_INTERVAL": "3600"}
    svc = service(env)
    wait_for(lambda: "orders" in stripped(sesam.entities()), what="good configuration live")
    time.sleep(0.3)
    cases = corpus()
    outcomes: dict[str, dict[str, Any]] = {}
    for case in cases:
        baseline, puts = sesam.entities(), sesam.put_count
        corpus_repo.write(case.files)
        if case.edit is dotdot_commit:
            corpus_repo.commit("good again")  # the plumbing builds on HEAD
        if case.edit:
            case.edit(corpus_repo)
        if case.edit is not dotdot_commit:
            corpus_repo.commit(case.name)
        started = time.monotonic()
        head = corpus_repo.push()
        trigger(svc.url)
        row = wait_for(lambda head=head: row_for(state_dir, head), timeout=60, what=f"history row for {case.name!r}")
        seconds = time.monotonic() - started
        text = reason(row)
        outcomes[case.name] = {"result": row["result"], "seconds": round(seconds, 2),
                               "reason": (text.strip().splitlines() or [""])[-1][:140], "known_defect": case.defect}
        assert row["result"] == case.expect, (case.name, dict(row))
        if case.expect == "refused":
            assert case.names in text, (case.name, text)
            assert sesam.put_count == puts, f"{case.name}: the node received an upload"
            assert sesam.entities() == baseline, f"{case.name}: the node changed"
        assert svc.proc.poll() is None and httpx.get(svc.url + "/healthz").status_code == 200
        # back to the good configuration for the next case (committed together with it)
        good = good_files()
        corpus_repo.write({path: good.get(path) for path in case.files})
        if case.name.startswith("SYNC_ROOT"):
            corpus_repo.write(good)
    refused = sum(1 for o in outcomes.values() if o["result"] == "refused")
    assert refused == sum(1 for c in cases if c.expect == "refused") >= 30
    assert "bom" in stripped(sesam.entities())
    for name, outcome in outcomes.items():
        results("bad-input", name, via="service", **outcome)
    check_no_leaks(svc.url, svc.log(), state_dir)


# --------------------------------------------------------------------------- the CLI
def cli_env(app_env: dict[str, str], git_server: GitHttpServer, sesam: SesamEmulator, state: Path,
            **extra: str) -> dict[str, str]:
    return {**app_env, "GIT_URL": git_server.url_for("acme/corpus.git"), "SYNC_ROOT": ROOT,
            "SESAM_API_URL": sesam.api_url, "STATE_DIR": str(state), **extra}  # type: ignore[attr-defined]


def test_cli_sync_exits_2_on_bad_commits(app_env, git_server: GitHttpServer, corpus_repo: WorkRepo,
                                         sesam: SesamEmulator, tmp_path: Path, results):
    """`autodeployer sync`: exit 2 and the reason on stdout; 0 again once the commit is fixed."""
    env = cli_env(app_env, git_server, sesam, tmp_path / "cli-state", SELF_ID=SELF_ID)
    assert run_cli(env, "sync").returncode == 0
    puts = sesam.put_count
    everything = {path: None for path in good_files() if path.startswith((P, S))}
    cases = [
        ("CLI: invalid JSON", {f"{P}/bad.conf.json": "{nope"}, env, f"{P}/bad.conf.json"),
        ("CLI: missing self entry", {f"{S}/{SELF_ID}.conf.json": None}, env, "SELF_ID"),
        ("CLI: empty tree (ALLOW_EMPTY guard)", everything, {k: v for k, v in env.items() if k != "SELF_ID"},
         "ALLOW_EMPTY"),
    ]
    for name, files, case_env, names in cases:
        corpus_repo.write(files)
        corpus_repo.commit(name)
        corpus_repo.push()
        done = run_cli(case_env, "sync")
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert "refused" in done.stdout and names in done.stdout, (name, done.stdout)
        assert sesam.put_count == puts
        results("bad-input", name, via="autodeployer sync", result="refused", exit_code=done.returncode,
                reason=[line for line in done.stdout.splitlines() if line.strip()][-1].strip()[:140])
        good = good_files()
        corpus_repo.write({path: good.get(path) for path in files})
    corpus_repo.write({f"{P}/bom.conf.json": BOM + json.dumps(pipe("bom")).encode()})
    corpus_repo.commit("a BOM is fine")
    corpus_repo.push()
    done = run_cli(env, "sync")
    assert done.returncode == 0 and "synced" in done.stdout, done.stdout
    assert "bom" in stripped(sesam.entities())


# --------------------------------------------------------------------------- defects found by the corpus (fixed)
# JSON that parses but cannot be uploaded (httpx encodes with allow_nan=False, as UTF-8) or that crashed the
# checks after parsing: jsondiff.loads_strict used to let these through, so the sync failed with an internal
# error instead of a refusal naming the file
DEFECT_CASES = {
    "number out of range (1e400)": '{"_id": "big", "type": "pipe", "x": 1e400}',
    "integer of 5,000 digits": '{"_id": "long", "type": "pipe", "x": ' + "7" * 5000 + "}",
    "lone surrogate escape": '{"_id": "sur", "type": "pipe", "x": "\\ud800"}',
    # the $SECRET( check walks the entity recursively, two frames a level (only files mentioning it)
    "nested 500 levels in a pipe": '{"_id": "d500", "type": "pipe", "x": ' + "[" * 500 + '"$SECRET(x)"'
                                   + "]" * 500 + "}",
}


def tree_of(files: dict[str, str]) -> Any:
    from autodeployer.model import SourceFile, Tree

    return Tree("c0ffee" * 6 + "abcd", "tree", {p: SourceFile(p, d.encode(), "100644", len(d.encode()))
                                                for p, d in files.items()}, sync_root=ROOT)


@pytest.mark.parametrize("name", list(DEFECT_CASES))
def test_unuploadable_json_is_refused_in_process(name: str):
    """parse_desired must refuse what the upload cannot encode (httpx: allow_nan=False, UTF-8), naming the
    file and the place in it (jsondiff.loads_strict; the 500-level case used to overflow the $SECRET( walk)."""
    from autodeployer.errors import Refused
    from autodeployer.targets.sesam import diff, parse_desired

    tree = tree_of({"pipes/odd.conf.json": DEFECT_CASES[name]})
    try:
        plan = diff(parse_desired(tree), [])
    except Refused as exc:
        assert f"{ROOT}/pipes/odd.conf.json" in str(exc) and "at line 1 column " in str(exc), str(exc)
        return
    httpx.Request("PUT", "http://node/api/config", json=plan.payload)  # what apply() would send
    pytest.fail("accepted and encodable: then it must be deployable")


def test_unuploadable_json_is_refused_end_to_end(app_env, git_server: GitHttpServer, corpus_repo: WorkRepo,
                                                 sesam: SesamEmulator, tmp_path: Path, results):
    """The same four files in one commit, through `autodeployer sync`: refused, each file named."""
    env = cli_env(app_env, git_server, sesam, tmp_path / "cli-state")
    files = {f"{P}/odd{i}.conf.json": text for i, text in enumerate(DEFECT_CASES.values())}
    corpus_repo.write(files)
    corpus_repo.commit("JSON the node cannot take")
    corpus_repo.push()
    done = run_cli(env, "sync")
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    results("bad-input", "unuploadable JSON (1e400, 5,000-digit integer, lone surrogate, 500 levels)",
            via="autodeployer sync", exit_code=done.returncode,
            result="refused" if "refused" in done.stdout else "failed", reason=" | ".join(lines)[:200])
    assert sesam.put_count == 0
    assert done.returncode == 2 and "refused" in done.stdout, done.stdout
    assert all(path in done.stdout for path in files), done.stdout


def test_two_metadata_entities_reason_names_the_files():
    from autodeployer.errors import Refused
    from autodeployer.targets.sesam import parse_desired

    tree = tree_of({"node-metadata.conf.json": j({"_id": "node", "type": "metadata"}),
                    "pipes/meta2.conf.json": j({"_id": "node2", "type": "metadata"})})
    with pytest.raises(Refused) as refused:
        parse_desired(tree)
    assert f"{ROOT}/pipes/meta2.conf.json" in str(refused.value), str(refused.value)


# --------------------------------------------------------------------------- Marathon
@pytest.fixture
def marathon() -> Iterator[MarathonEmulator]:
    emulator = MarathonEmulator(token=MARATHON_TOKEN, deploy_duration=0.05)
    with emulator.serve() as server:
        emulator.url = server.url  # type: ignore[attr-defined]
        yield emulator


MARATHON_CASES = [
    ("Marathon: invalid app id", "specs/bad-id.json", {"id": "Web_App!", "cmd": "sleep 1", "instances": 1}),
    ("Marathon: app outside its group", "specs/group.json",
     {"id": "/shop", "apps": [{"id": "/elsewhere/api", "cmd": "serve", "instances": 1}]}),
    ("Marathon: invalid JSON", "specs/broken.json", '{"id": "web", "cmd": '),
]


def test_marathon_specs_with_invalid_ids_are_refused(tmp_path: Path, git_server: GitHttpServer,
                                                     marathon: MarathonEmulator, results):
    pytest.importorskip("autodeployer.targets.marathon")
    repo = WorkRepo.create(tmp_path / "git" / "acme" / "apps.git", tmp_path / "work-apps")
    good = {"specs/web.json": json.dumps({"id": "web", "cmd": "sleep 3600", "instances": 1}) + "\n"}
    repo.write(good)
    repo.commit("good")
    repo.push()
    env = base_env(GIT_URL=git_server.url_for("acme/apps.git"), GITHUB_TOKEN=git_server.token or "",
                   TARGET="marathon", MARATHON_URL=marathon.url, MARATHON_TOKEN=MARATHON_TOKEN,  # type: ignore[attr-defined]
                   APP_NAME="apps", STATE_DIR=str(tmp_path / "marathon-state"))
    first = run_cli(env, "sync")
    assert first.returncode == 0, first.stdout + first.stderr
    apps = marathon.apps()
    writes = marathon.count("PUT") + marathon.count("POST") + marathon.count("DELETE")
    for name, path, spec in MARATHON_CASES:
        repo.write({path: spec if isinstance(spec, str) else json.dumps(spec)})
        repo.commit(name)
        repo.push()
        done = run_cli(env, "sync")
        assert done.returncode == 2 and "refused" in done.stdout and path in done.stdout, (name, done.stdout)
        assert marathon.count("PUT") + marathon.count("POST") + marathon.count("DELETE") == writes
        assert set(marathon.apps()) == set(apps)
        results("bad-input", name, via="autodeployer sync (TARGET=marathon)", result="refused",
                exit_code=done.returncode,
                reason=next(line for line in done.stdout.splitlines() if path in line).strip()[:140])
        repo.write({path: None})


# --------------------------------------------------------------------------- refusals and backoff
def test_the_fix_after_refused_commits_deploys_at_the_poll_interval(service, rel_env, config_repo: WorkRepo,
                                                                    sesam: SesamEmulator, state_dir: Path, results):
    svc = service(rel_env)  # SYNC_INTERVAL=0.2, polling only
    wait_for(lambda: "orders" in stripped(sesam.entities()), what="first sync")
    for i in range(5):
        config_repo.write({"pipes/typo.conf.json": f"{{ typo {i}"})
        config_repo.commit(f"typo {i}")
        head = config_repo.push()
        wait_for(lambda head=head: (row_for(state_dir, head) or {"result": ""})["result"] == "refused",
                 timeout=30, what=f"refusal {i}")
    config_repo.write({"pipes/typo.conf.json": entity_json(pipe("typo"))})
    config_repo.commit("fixed")
    config_repo.push()
    pushed = time.monotonic()
    wait_for(lambda: "typo" in stripped(sesam.entities()), timeout=30, what="the fix deployed")
    took = time.monotonic() - pushed
    results("bad-input", "fix pushed after 5 refused commits (polling every 0.2 s)", fix_live_after_s=round(took, 2),
            expected_within_s=1.5)
    assert svc.proc.poll() is None
    assert took < 1.5, f"the fix took {took:.1f} s to deploy"

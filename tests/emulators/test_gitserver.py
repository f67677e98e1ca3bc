"""Real git clients against the loopback Git servers (smart HTTP and git daemon)."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autodeployer_emulators.gitserver import (
    GitDaemon,
    GitError,
    GitHttpServer,
    WorkRepo,
    basic_auth_header,
    bearer_auth_header,
    extra_header_env,
    run_git,
)

TOKEN = "s3cr3t-t0ken"
REPO = "acme/config.git"


def _children() -> set[int]:
    """PIDs of this process's direct children (to prove no git process is leaked)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            with open(task / "children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:  # the thread ended between the listing and the read: it has no children
            continue
    return pids


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ls_remote(url: str, env: dict[str, str] | None = None, *opts: str) -> dict[str, str]:
    out = run_git(*opts, "ls-remote", url, env=env).stdout.decode()
    return {ref: sha for sha, ref in (line.split("\t") for line in out.splitlines())}


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    before = _children()
    yield
    deadline = time.monotonic() + 5
    while (_children() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (_children() - before), "git processes leaked"


@pytest.fixture
def repo(tmp_path: Path) -> WorkRepo:
    r = WorkRepo.create(tmp_path / "root" / REPO, tmp_path / "work")
    r.write({"pipes/a.conf.json": '{"_id":"a","type":"pipe"}', "README.md": "x"})
    r.commit("initial")
    r.push()
    return r


@pytest.fixture
def srv(tmp_path: Path, repo: WorkRepo) -> Iterator[GitHttpServer]:
    server = GitHttpServer(tmp_path / "root", token=TOKEN)
    with server.serve():
        yield server


# -- smart HTTP: auth ---------------------------------------------------------------------------


def test_basic_token_ls_remote_clone_fetch(
    srv: GitHttpServer, repo: WorkRepo, tmp_path: Path
) -> None:
    url = srv.url_for(REPO)
    assert TOKEN not in url and url.startswith("http://127.0.0.1:")
    env = extra_header_env(basic_auth_header(TOKEN, user="anything"))
    assert _ls_remote(url, env)["refs/heads/master"] == repo.head

    mirror = tmp_path / "mirror.git"
    run_git("clone", "-q", "--mirror", url, mirror, env=env)
    assert run_git("rev-parse", "master", cwd=mirror).stdout.decode().strip() == repo.head

    repo.write({"pipes/b.conf.json": '{"_id":"b"}'})
    new = repo.commit("add b")
    repo.push()
    assert _ls_remote(url, env)["refs/heads/master"] == new
    run_git("fetch", "-q", "origin", cwd=mirror, env=env)
    assert run_git("rev-parse", "master", cwd=mirror).stdout.decode().strip() == new
    assert TOKEN not in (mirror / "config").read_text()


def test_bearer_via_extra_header(srv: GitHttpServer, repo: WorkRepo, tmp_path: Path) -> None:
    env = extra_header_env(bearer_auth_header(TOKEN))
    assert _ls_remote(srv.url_for(REPO), env)["refs/heads/master"] == repo.head
    run_git("clone", "-q", srv.url_for(REPO), tmp_path / "c", env=env)
    assert (tmp_path / "c/pipes/a.conf.json").read_text() == '{"_id":"a","type":"pipe"}'
    assert srv.auth_env("bearer") == env


def test_credentials_in_url_use_git_native_basic(srv: GitHttpServer, repo: WorkRepo) -> None:
    url = srv.url_for(REPO).replace("http://", f"http://deploy:{TOKEN}@")
    assert _ls_remote(url)["refs/heads/master"] == repo.head
    assert [r.status for r in srv.requests][:2] == [401, 200]  # challenge, then Basic


@pytest.mark.parametrize(
    "env",
    [
        None,
        extra_header_env(basic_auth_header("wrong-token")),
        extra_header_env(bearer_auth_header("wrong-token")),
    ],
    ids=["no-auth", "wrong-basic", "wrong-bearer"],
)
def test_unauthorised_fails_without_leaking_token(
    srv: GitHttpServer, env: dict[str, str] | None
) -> None:
    with pytest.raises(GitError) as err:
        run_git("ls-remote", srv.url_for(REPO), env=env)
    assert "wrong-token" not in err.value.stderr and TOKEN not in err.value.stderr
    assert [r.status for r in srv.requests] == [401]
    assert not srv.requests[0].authenticated


def test_http_401_challenge_and_record_has_no_credentials(srv: GitHttpServer) -> None:
    info = srv.url_for(REPO) + "/info/refs?service=git-upload-pack"
    r = httpx.get(info)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="git"'
    assert httpx.get(info, headers={"Authorization": "Basic !!notbase64"}).status_code == 401
    assert httpx.get(info, headers={"Authorization": f"Token {TOKEN}"}).status_code == 401
    r = httpx.get(info, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-git-upload-pack-advertisement"
    encoded = base64.b64encode(f"x:{TOKEN}".encode()).decode()
    dump = repr(srv.requests)
    assert TOKEN not in dump and encoded not in dump and "Authorization" not in dump


def test_no_token_means_open_server(tmp_path: Path, repo: WorkRepo) -> None:
    server = GitHttpServer(tmp_path / "root", token=None)
    with server.serve():
        assert _ls_remote(server.url_for(REPO))["refs/heads/master"] == repo.head


# -- smart HTTP: protocols, push, gzip ----------------------------------------------------------


def test_protocol_v2_and_v0(srv: GitHttpServer, repo: WorkRepo) -> None:
    url, env = srv.url_for(REPO), srv.auth_env()
    assert _ls_remote(url, env, "-c", "protocol.version=2")["HEAD"] == repo.head
    v2 = srv.requests
    assert [(r.method, r.git_protocol) for r in v2] == [("GET", "version=2"), ("POST", "version=2")]
    assert v2[1].path == f"/{REPO}/git-upload-pack"  # ls-refs is a v2 command

    srv.reset_stats()
    assert _ls_remote(url, env, "-c", "protocol.version=0")["HEAD"] == repo.head
    assert [(r.method, r.git_protocol) for r in srv.requests] == [("GET", "")]


def test_push_over_http(srv: GitHttpServer, repo: WorkRepo, tmp_path: Path) -> None:
    env = srv.auth_env()
    clone = tmp_path / "clone"
    run_git("clone", "-q", srv.url_for(REPO), clone, env=env)
    (clone / "pipes/c.conf.json").write_text('{"_id":"c"}')
    run_git("add", "-A", cwd=clone)
    run_git("commit", "-q", "-m", "via http", cwd=clone)
    run_git("push", "-q", "origin", "master", cwd=clone, env=env)
    pushed = run_git("rev-parse", "HEAD", cwd=clone).stdout.decode().strip()
    assert run_git("rev-parse", "master", cwd=repo.bare_path).stdout.decode().strip() == pushed
    assert any(r.path.endswith("/git-receive-pack") and r.status == 200 for r in srv.requests)


def test_push_refused_when_disabled(tmp_path: Path, repo: WorkRepo) -> None:
    server = GitHttpServer(tmp_path / "root", token=TOKEN, allow_push=False)
    with server.serve():
        clone = tmp_path / "clone"
        run_git("clone", "-q", server.url_for(REPO), clone, env=server.auth_env())
        run_git("commit", "-q", "--allow-empty", "-m", "x", cwd=clone)
        with pytest.raises(GitError, match="403"):
            run_git("push", "-q", "origin", "master", cwd=clone, env=server.auth_env())


def test_gzipped_request_bodies(srv: GitHttpServer, repo: WorkRepo, tmp_path: Path) -> None:
    refspecs = []
    for i in range(40):  # many wants make git gzip the upload-pack request (> 1 KiB)
        repo.write({f"b{i}.txt": str(i)})
        refspecs.append(f"{repo.commit(f'b{i}')}:refs/heads/branch-with-a-long-name-{i:03d}")
    repo.git("push", "-q", "origin", *refspecs)
    srv.reset_stats()
    run_git("clone", "-q", "--mirror", srv.url_for(REPO), tmp_path / "m.git", env=srv.auth_env())
    assert any(r.content_encoding == "gzip" and r.status == 200 for r in srv.requests)
    refs = run_git("for-each-ref", cwd=tmp_path / "m.git").stdout.decode().splitlines()
    assert len(refs) == 41


# -- smart HTTP: measurement and faults ---------------------------------------------------------


def test_bytes_sent_and_reset(srv: GitHttpServer, repo: WorkRepo, tmp_path: Path) -> None:
    repo.write({"blob.bin": os.urandom(200_000)})
    repo.commit("big")
    repo.push()
    srv.reset_stats()
    run_git("clone", "-q", srv.url_for(REPO), tmp_path / "c", env=srv.auth_env())
    records = srv.requests
    assert srv.bytes_sent == sum(r.response_bytes for r in records) > 200_000
    assert all(r.duration > 0 and r.status == 200 for r in records)
    assert sum(r.request_bytes for r in records) > 0
    srv.reset_stats()
    assert srv.bytes_sent == 0 and srv.requests == []


def test_fail_next_then_recover(srv: GitHttpServer, repo: WorkRepo) -> None:
    url, env = srv.url_for(REPO), srv.auth_env()
    srv.fail_next(status=500, times=2)
    for _ in range(2):
        with pytest.raises(GitError, match="500"):
            run_git("ls-remote", url, env=env)
    assert _ls_remote(url, env)["refs/heads/master"] == repo.head
    assert [r.status for r in srv.requests][:2] == [500, 500]


def test_set_delay_slows_responses(srv: GitHttpServer) -> None:
    url, env = srv.url_for(REPO), srv.auth_env()
    t0 = time.perf_counter()
    _ls_remote(url, env)
    fast = time.perf_counter() - t0
    srv.set_delay(0.25)
    t0 = time.perf_counter()
    _ls_remote(url, env)  # protocol v2: two requests
    slow = time.perf_counter() - t0
    srv.set_delay(0)
    assert slow >= 0.5 and slow > fast + 0.4
    assert all(r.duration >= 0.25 for r in srv.requests[-2:])


def test_down_and_up(srv: GitHttpServer, repo: WorkRepo) -> None:
    url, env = srv.url_for(REPO), srv.auth_env()
    srv.down()
    with pytest.raises(GitError, match="503"):
        run_git("ls-remote", url, env=env)
    r = httpx.get(url + "/info/refs?service=git-upload-pack")
    assert r.status_code == 503 and r.headers["connection"] == "close"
    srv.up()
    assert _ls_remote(url, env)["refs/heads/master"] == repo.head


def test_server_stops_and_restarts_on_same_port(tmp_path: Path, repo: WorkRepo) -> None:
    server = GitHttpServer(tmp_path / "root", token=TOKEN)
    with server.serve():
        port = server.port
        assert _accepts(port)
    assert not _accepts(port)
    with server.serve(port=port):
        assert _ls_remote(server.url_for(REPO), server.auth_env())["HEAD"] == repo.head


def test_url_for_requires_serve(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        GitHttpServer(tmp_path).url_for(REPO)


# -- git daemon ---------------------------------------------------------------------------------


def test_git_daemon_ls_remote_clone_push(tmp_path: Path, repo: WorkRepo) -> None:
    daemon = GitDaemon(tmp_path / "root")
    with daemon as d:
        url = d.url_for(REPO)
        assert url == f"git://127.0.0.1:{d.port}/{REPO}"
        assert _ls_remote(url)["refs/heads/master"] == repo.head
        clone = tmp_path / "clone"
        run_git("clone", "-q", url, clone)
        run_git("commit", "-q", "--allow-empty", "-m", "via daemon", cwd=clone)
        run_git("push", "-q", "origin", "master", cwd=clone)
        pushed = run_git("rev-parse", "HEAD", cwd=clone).stdout.decode().strip()
        assert _ls_remote(url)["refs/heads/master"] == pushed
        pid, port = d.pid, d.port
        assert d.running
    assert not daemon.running and not _accepts(port)
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_git_daemon_missing_repo_errors(tmp_path: Path, repo: WorkRepo) -> None:
    with GitDaemon(tmp_path / "root") as d, pytest.raises(GitError):
        run_git("ls-remote", d.url_for("acme/nope.git"))


# -- WorkRepo -----------------------------------------------------------------------------------


def test_work_repo_write_delete_symlink(repo: WorkRepo) -> None:
    repo.write({"pipes/a.conf.json": None, "bin/data.bin": b"\x00\x01"})
    repo.symlink("pipes/evil.conf.json", "../../../etc/passwd")
    sha = repo.commit("edit")
    assert repo.push() == sha
    tree = run_git("ls-tree", "-r", "master", cwd=repo.bare_path).stdout.decode()
    assert "pipes/a.conf.json" not in tree
    assert "120000 blob" in tree and "pipes/evil.conf.json" in tree
    assert "bin/data.bin" in tree
    with pytest.raises(ValueError):
        repo.write({"../outside": "x"})


def test_work_repo_reopens_existing_and_force_push(repo: WorkRepo, tmp_path: Path) -> None:
    again = WorkRepo.create(repo.bare_path, tmp_path / "work2")
    assert again.head == repo.head
    assert (again.work_dir / "README.md").read_text() == "x"
    old = again.head
    again.git("reset", "-q", "--hard", "HEAD")
    again.write({"README.md": "rewritten"})
    again.git("commit", "-q", "-a", "--amend", "-m", "rewrite")
    with pytest.raises(GitError):
        again.push()
    new = again.push(force=True)
    assert new != old
    assert run_git("rev-parse", "master", cwd=repo.bare_path).stdout.decode().strip() == new


def test_generate_large_history_quickly(tmp_path: Path) -> None:
    bare = tmp_path / "big.git"
    t0 = time.perf_counter()
    sha = WorkRepo.generate(bare, commits=2000, files=5000)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, elapsed
    assert run_git("rev-list", "--count", sha, cwd=bare).stdout.decode().strip() == "2000"
    names = run_git("ls-tree", "-r", "--name-only", sha, cwd=bare).stdout.decode().splitlines()
    assert len(names) == 5000
    again = WorkRepo.generate(tmp_path / "again.git", commits=2000, files=5000)
    assert again == sha  # fixed clock: reproducible SHAs


def test_generate_custom_factory_and_append(tmp_path: Path) -> None:
    bare = tmp_path / "r.git"

    def factory(i: int) -> tuple[str, bytes]:
        return f"pipes/p {i}.conf.json", b'{"_id": "p%d"}' % i

    first = WorkRepo.generate(bare, commits=10, files=3, file_factory=factory)
    assert run_git("rev-list", "--count", first, cwd=bare).stdout.decode().strip() == "10"
    second = WorkRepo.bulk(bare, commits=2, files=2, file_factory=lambda i: (f"extra/{i}", b"e"))
    assert run_git("rev-list", "--count", second, cwd=bare).stdout.decode().strip() == "12"
    work = WorkRepo.create(bare, tmp_path / "w")
    assert work.head == second
    assert (work.work_dir / "pipes/p 2.conf.json").read_bytes() == b'{"_id": "p2"}'
    assert sorted(p.name for p in (work.work_dir / "extra").iterdir()) == ["0", "1"]

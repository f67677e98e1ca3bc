"""Git source: a bare mirror in STATE_DIR, cheap head checks, fetch on change, reads from objects.

Credentials never reach git's argv or a URL: an HTTPS token travels as an ``http.<url>.extraHeader``
set through ``GIT_CONFIG_*`` environment variables (scoped to the repository URL, so a redirect to
another host does not receive it); an SSH key is written owner-only under STATE_DIR and used with
strict host-key checking.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import SecretStr

from ..errors import SourceError
from ..logs import Redactor, get_logger
from ..model import CommitInfo, SourceFile, Tree
from .catfile import cat_blobs
from .github import GitHubClient, GitHubError
from .sharedhead import SharedHeads
from .smartfetch import SmartFetch
from .smarthttp import ProtocolError, SmartHttpHead, Unreachable, find_ref
from .spec import SourceSpec

MAX_FILE_BYTES = 10 * 1024 * 1024  # blobs larger than this are listed but not read
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# How servers refuse a commit asked for by id: gone from the branch (force-push), or not allowed (old servers)
_NOT_SERVED = re.compile(
    r"not our ref|unadvertised object|couldn't find remote ref|not a valid|no such remote ref", re.I
)
# Lock files older than this process were left by a git that was killed (kill -9, OOM, power loss),
# unless another live process of ours uses the mirror too (a CLI run next to the service): each user
# holds a shared flock on PRESENCE_FILE, so the first one can tell it is alone. Clock of import, which
# is a little after the process started: good enough to tell a previous process's leftovers.
PROCESS_START = time.time()
PRESENCE_FILE = "autodeployer.users"
STALE_LOCK_AFTER = 600.0  # no git of autodeployer's lives this long (nor twice its GIT_TIMEOUT, if longer)
_LOCK_IN_USE = re.compile(r"Unable to create '([^']+\.lock)': File exists")

GitObserver = Callable[[str, str, float], None]  # (kind, result, seconds), e.g. for metrics


@dataclass
class GitResult:
    returncode: int
    stdout: bytes
    stderr: str


@dataclass
class MirrorLocks:
    """One lock per mirror directory: apps that follow the same repository share a mirror."""

    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def get(self, path: Path) -> asyncio.Lock:
        return self._locks.setdefault(str(path), asyncio.Lock())


class GitSource:
    """Everything autodeployer needs from one repository and branch."""

    def __init__(
        self,
        spec: SourceSpec,
        state_dir: Path,
        *,
        redactor: Redactor | None = None,
        locks: MirrorLocks | None = None,
        observer: GitObserver | None = None,
        http: httpx.AsyncClient | None = None,
        heads: SharedHeads | None = None,
    ) -> None:
        self.spec = spec
        self._heads = heads  # polls of apps following the same branch share one head check
        self._head_seen = 0  # generation of this source's own last head check
        self._head_key_cache: tuple[GitHubClient | None, tuple[str, ...]] | None = None
        key = hashlib.sha256(spec.url.encode()).hexdigest()[:16]
        self.mirror = state_dir / "mirrors" / f"{key}.git"
        self._secrets_dir = state_dir / "secrets" / key
        self._redact = redactor or Redactor()
        if spec.token:
            self._redact.add(spec.token.get_secret_value(), self._basic(spec.token))
        if spec.ssh_key:
            self._redact.add(spec.ssh_key.get_secret_value())
        self._lock = (locks or MirrorLocks()).get(self.mirror)
        self._observe = observer or (lambda kind, result, seconds: None)
        self._env: dict[str, str] | None = None
        self.github: GitHubClient | None = None  # set to read heads through the REST API
        self._smart: SmartHttpHead | None = None
        self._smart_fetch: SmartFetch | None = None  # a push's fetch without `git fetch` (smartfetch.py)
        if http is not None and spec.url.startswith(("http://", "https://")):
            headers = {}
            if spec.token:
                headers["Authorization"] = f"Basic {self._basic(spec.token)}"
            self._smart = SmartHttpHead(spec.url, http, headers, timeout=min(spec.git_timeout, 30.0),
                                        pool=heads.connections if heads is not None else None)
            self._smart_fetch = SmartFetch(spec.url, http, headers, timeout=spec.git_timeout)
        self._etag: str | None = None
        self._api_sha: str | None = None
        self._blobs: dict[str, bytes] = {}  # oid -> content, of the last tree read (objects never change)
        self._locks_checked = False  # stale lock files are cleared on this process's first use
        # releases this source's flock on PRESENCE_FILE
        self._presence: weakref.finalize[[int], GitSource] | None = None

    # ------------------------------------------------------------------ environment
    def _basic(self, token: SecretStr) -> str:
        """user:token for HTTP Basic: GitHub takes any user with a token; others (GIT_USERNAME) want theirs."""
        return base64.b64encode(f"{self.spec.username}:{token.get_secret_value()}".encode()).decode()

    def _git_env(self) -> dict[str, str]:
        if self._env is not None:
            return self._env
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(
            GIT_TERMINAL_PROMPT="0",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_ASKPASS="/bin/false",
            SSH_ASKPASS="/bin/false",
            LC_ALL="C",
        )
        # Protocol v2 lets ls-remote ask for one ref instead of receiving all of them (GitHub
        # repositories carry thousands of refs/pull/*). git's own v2 client stalls on git:// though.
        version = "0" if self.spec.url.startswith("git://") else "2"
        config: list[tuple[str, str]] = [("protocol.version", version), ("core.hooksPath", os.devnull)]
        # gc.auto is 0 in the mirror, yet every fetch still spawns `git maintenance run --auto` to find that
        # out: one process (~3 ms) of a push's sync for nothing.
        config.append(("maintenance.auto", "false"))
        if self.spec.token and self.spec.url.startswith(("http://", "https://")):
            header = f"Authorization: Basic {self._basic(self.spec.token)}"
            config.append((f"http.{self.spec.url}.extraHeader", header))
        if self.spec.ssh_key:
            env["GIT_SSH_COMMAND"] = self._ssh_command()
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for i, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        self._env = env
        return env

    def _ssh_command(self) -> str:
        assert self.spec.ssh_key is not None
        self._secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_file = self._secrets_dir / "id_deploy"
        hosts_file = self._secrets_dir / "known_hosts"
        _write_private(key_file, self.spec.ssh_key.get_secret_value().strip() + "\n")
        _write_private(hosts_file, (self.spec.known_hosts or "").strip() + "\n")
        return (
            f"ssh -i {key_file} -o IdentitiesOnly=yes -o BatchMode=yes"
            f" -o StrictHostKeyChecking=yes -o UserKnownHostsFile={hosts_file}"
        )

    # ------------------------------------------------------------------ running git
    async def _git(
        self,
        *args: str,
        stdin: bytes | None = None,
        timeout: float | None = None,
        cwd: Path | None = None,
        check: bool = True,
    ) -> GitResult:
        timeout = timeout or self.spec.git_timeout
        try:
            proc = await asyncio.create_subprocess_exec(
                "git",
                *args,
                cwd=str(cwd or self.mirror),
                env=self._git_env(),
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SourceError(f"cannot run git: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SourceError(f"git {args[0]} timed out after {timeout:g} s ({self.spec.url})") from None
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        result = GitResult(proc.returncode or 0, out, self._redact(err.decode("utf-8", "replace")))
        if check and result.returncode != 0:
            raise SourceError(f"git {args[0]} failed for {self.spec.url}: {git_error(result.stderr)}")
        return result

    async def _timed(self, kind: str, coro: Awaitable[GitResult]) -> GitResult:
        start = time.perf_counter()
        try:
            result = await coro
        except SourceError:
            self._observe(kind, "error", time.perf_counter() - start)
            raise
        self._observe(kind, "ok", time.perf_counter() - start)
        return result

    async def ensure_mirror(self) -> None:
        if (self.mirror / "HEAD").exists():
            if not self._locks_checked:
                self._locks_checked = True
                alone = self._announce()
                self.clear_stale_locks(PROCESS_START if alone else time.time() - self._stale_lock_age())
            return
        self._locks_checked = True
        try:
            self.mirror.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # read-only or full STATE_DIR
            raise SourceError(f"cannot create the mirror of {self.spec.url} in {self.mirror.parent}: "
                              f"{exc.strerror or exc}") from None
        self._announce()
        await self._git("init", "--bare", "--quiet", ".")
        await self._git("config", "remote.origin.url", self.spec.url)
        await self._git("config", "gc.auto", "0")

    def _announce(self) -> bool:
        """Hold a shared flock on the mirror's PRESENCE_FILE while this source lives. True when no one
        else holds one: then no git of another live process of ours can be running in the mirror."""
        if self._presence is not None:
            return False
        try:
            fd = os.open(self.mirror / PRESENCE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False  # read-only STATE_DIR: nothing could be removed anyway
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError:
            alone = False
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while another process runs this same check
        self._presence = weakref.finalize(self, os.close, fd)
        return alone

    def close(self) -> None:
        """Release this source's presence in the mirror (a process that exits releases it anyway)."""
        if self._presence is not None:
            self._presence()

    def _stale_lock_age(self) -> float:
        return max(STALE_LOCK_AFTER, 2 * self.spec.git_timeout)

    # ------------------------------------------------------------------ operations
    async def head(self, max_age: float = 0.0) -> str:
        """The commit the branch (or tag) points to. `max_age` > 0 (a poll) accepts the answer of
        another app's check of the same branch with the same credentials, at most that old and not
        used by this source before (sources/sharedhead.py); 0 checks now (and shares the answer)."""
        if self._heads is None:
            return await self._check_head()
        answer = await self._heads.head(self._head_key(), self._check_head, max_age=max_age, seen=self._head_seen)
        if answer.shared:
            self._observe("head", "shared", 0.0)
        else:  # never served back to this source: its next poll needs an answer newer than its own last check
            self._head_seen = max(self._head_seen, answer.generation)
        return answer.sha

    def _head_key(self) -> tuple[str, ...]:
        """What makes two head checks the same question: repository, ref, how it is read, credentials
        (computed once: the spec does not change, and `github` is set right after construction)."""
        assert self._heads is not None
        if self._head_key_cache is None or self._head_key_cache[0] is not self.github:
            self._head_key_cache = (self.github, self._make_head_key(self._heads))
        return self._head_key_cache[1]

    def _make_head_key(self, heads: SharedHeads) -> tuple[str, ...]:
        api = self.github is not None and self.spec.head_check != "git" and not self.spec.tag
        token = self.spec.token.get_secret_value() if self.spec.token else None
        key = self.spec.ssh_key.get_secret_value() if self.spec.ssh_key else None
        return (self.spec.url, self.spec.ref, f"api:{self.spec.head_check}" if api else "git",
                heads.identity(self.spec.username, token, key, self.spec.known_hosts))

    async def _check_head(self) -> str:
        """GitHub's sha media type when enabled (idle polls are free 304s), otherwise one `ls-remote`.
        Never a fetch. A tag is always read with `ls-remote` (one ls-refs that peels it), which answers
        for annotated and lightweight tags alike."""
        if self.github is not None and self.spec.head_check != "git" and not self.spec.tag:
            try:
                return await self._api_head(self.github)
            except GitHubError as exc:
                if self.spec.head_check == "api":
                    raise SourceError(str(exc)) from None
                self._observe("api-head", "fallback", 0.0)  # rate limited or down: ls-remote still works
        return await self._ls_remote_head()

    async def _api_head(self, github: GitHubClient) -> str:
        start = time.perf_counter()
        try:
            sha, etag = await github.head(self.spec.branch, self._etag)
        except GitHubError:
            self._observe("api-head", "error", time.perf_counter() - start)
            raise
        self._observe("api-head", "not-modified" if sha is None else "ok", time.perf_counter() - start)
        if sha is None and self._api_sha:
            return self._api_sha
        if sha is None:  # a 304 without a remembered sha: ask again without the ETag
            self._etag = None
            return await self._api_head(github)
        self._api_sha, self._etag = sha, etag
        return sha

    async def _ls_remote_head(self) -> str:
        ref = self.spec.ref
        missing = f"{self.spec.follows} not found in {self.spec.url}"
        if self._smart is not None:
            start = time.perf_counter()
            try:
                sha = await self._smart.head(ref)
            except Unreachable as exc:
                self._observe("ls-remote", "error", time.perf_counter() - start)
                raise SourceError(f"cannot reach {self.spec.url}: {exc}") from None
            except ProtocolError:
                self._smart = None  # this server wants the real client from now on
            else:
                self._observe("ls-remote", "ok", time.perf_counter() - start)
                if sha is None:
                    raise SourceError(missing)
                return sha
        await self.ensure_mirror()
        # `<tag>^{}` lists the commit an annotated tag points to (a lightweight tag has no such line)
        patterns = (ref, f"{ref}^{{}}") if self.spec.tag else (ref,)
        result = await self._timed(
            "ls-remote", self._git("ls-remote", "--exit-code", "origin", *patterns, check=False)
        )
        if result.returncode == 2:
            raise SourceError(missing)
        if result.returncode != 0:
            raise SourceError(f"cannot reach {self.spec.url}: {git_error(result.stderr)}")
        lines = [line.encode().replace(b"\t", b" ") for line in result.stdout.decode().splitlines()]
        sha = find_ref(lines, ref)
        if sha is None:
            raise SourceError(missing)
        return sha

    def clear_stale_locks(self, before: float) -> list[str]:
        """Remove git lock files (`*.lock`) in the mirror last modified before `before`.

        git creates `<file>.lock` (refs, packed-refs, config, HEAD, shallow, index, commit-graph, ...)
        and renames it into place; a git killed in between leaves it behind, and every later fetch
        then fails with "cannot lock ref" or "Unable to create '...lock': File exists". Returns the
        paths removed (relative to the mirror); they are logged as a warning.
        """
        removed: list[str] = []
        for directory, dirs, files in os.walk(self.mirror):
            if os.path.basename(directory) == "objects":
                dirs[:] = [d for d in dirs if d in ("info", "pack")]  # skip the 256 loose-object directories
            for name in files:
                if not name.endswith(".lock"):
                    continue
                path = Path(directory, name)
                try:
                    if path.lstat().st_mtime < before:
                        path.unlink()
                        removed.append(str(path.relative_to(self.mirror)))
                except FileNotFoundError:
                    continue
                except OSError as exc:  # read-only STATE_DIR: the fetch will say so
                    get_logger(component="git").error("cannot remove a stale git lock file", path=str(path),
                                                      error=exc.strerror or str(exc))
        if removed:
            get_logger(component="git").warning("removed stale git lock files left by a killed git",
                                                mirror=str(self.mirror), files=removed)
        return removed

    async def has_commit(self, sha: str) -> bool:
        result = await self._git("cat-file", "-e", f"{sha}^{{commit}}", check=False)
        return result.returncode == 0

    async def fetch(self, sha: str | None = None) -> str:
        """Fetch the branch unless `sha` is already present; returns the commit to deploy."""
        async with self._lock:
            await self.ensure_mirror()
            if sha and await self.has_commit(sha):
                return sha
            ref = self.spec.ref
            if sha and await self._fetch_smart(sha, ref):
                return sha
            if sha and await self._fetch_commit(sha, ref):
                return sha
            args = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "origin", f"+{ref}:{ref}")
            try:
                await self._timed("fetch", self._git(*args))
            except SourceError as exc:
                # A lock left by a git killed while this process runs (an operator's CLI run, say):
                # once it is older than any git of ours can live, it is stale; clear it and retry once.
                if not _LOCK_IN_USE.search(str(exc)):
                    raise
                if not self.clear_stale_locks(max(PROCESS_START, time.time() - self._stale_lock_age())):
                    raise
                await self._timed("fetch", self._git(*args))
            if sha and await self.has_commit(sha):
                return sha
            # The branch (or tag) moved on (or was force-pushed) between the head check and the fetch;
            # ^{commit} peels an annotated tag.
            fetched = await self._git("rev-parse", "--verify", f"{ref}^{{commit}}")
            return fetched.stdout.decode().strip()

    async def fetch_ref(self, ref: str, into: str) -> str:
        """Fetch a named ref (branch, tag, `refs/pull/N/merge`) into the private ref `into` and return its
        commit: read-only plans use it, so the followed branch's ref stays as the reconcile knows it."""
        async with self._lock:
            await self.ensure_mirror()
            await self._timed("fetch", self._git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "origin",
                                                 f"+{ref}:{into}"))
            done = await self._git("rev-parse", "--verify", f"{into}^{{commit}}")
        return done.stdout.decode().strip()

    async def changed_paths(self, old: str, new: str) -> list[str]:
        """Paths under SYNC_ROOT that differ between two commits (relative to SYNC_ROOT), for plans of
        the command target; both commits must be in the mirror."""
        root = self.spec.sync_root.strip("/")
        args = ["diff", "--name-only", "-z", "--no-renames", old, new]
        if root:
            args += ["--", root]
        done = await self._git(*args)
        names = [n.decode("utf-8", "replace") for n in done.stdout.split(b"\0") if n]
        return [n[len(root) + 1:] if root else n for n in names]

    async def _fetch_smart(self, sha: str, ref: str) -> bool:
        """One protocol-v2 fetch POST and `git index-pack` (smartfetch.py); False on any surprise, and the
        caller runs `git fetch` as before (it reports a server that is really down)."""
        if self._smart_fetch is None or self._smart is None or not _SHA.fullmatch(sha):
            return False
        start = time.perf_counter()
        try:
            await self._smart_fetch.fetch(self.mirror, ref, sha, self._run_git)
        except (ProtocolError, Unreachable) as exc:
            get_logger(component="git").debug("smart fetch fell back to git fetch", reason=str(exc))
            return False
        self._observe("fetch", "ok", time.perf_counter() - start)
        return True

    async def _run_git(self, args: tuple[str, ...], stdin: bytes) -> tuple[int, bytes, str]:
        result = await self._git(*args, stdin=stdin, check=False)
        return result.returncode, result.stdout, result.stderr

    async def _fetch_commit(self, sha: str, ref: str) -> bool:
        """Fetch the commit the head check saw, by id: protocol v2 then skips listing the refs (one
        round trip less). False when the server will not serve it (protocol v0, or the branch was
        force-pushed and the commit is gone): the caller fetches the branch instead."""
        if self.spec.url.startswith("git://") or not _SHA.fullmatch(sha):
            return False
        start = time.perf_counter()
        result = await self._git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "origin", f"+{sha}:{ref}",
                                 check=False)
        self._observe("fetch", "ok" if result.returncode == 0 else "error", time.perf_counter() - start)
        if result.returncode == 0:
            return True
        if _NOT_SERVED.search(result.stderr) or _LOCK_IN_USE.search(result.stderr):
            return False  # the branch fetch follows (and clears a stale lock)
        # Anything else (server down, disk full, ...) would fail the branch fetch too: one attempt, not two.
        raise SourceError(f"git fetch failed for {self.spec.url}: {git_error(result.stderr)}")

    async def resolve(self, revision: str) -> str:
        """A full commit sha for `revision` (sha or prefix), fetching the branch if needed."""
        if not re.fullmatch(r"[0-9a-fA-F]{4,40}", revision):
            raise SourceError(f"{revision!r} is not a commit sha")
        for attempt in range(2):
            result = await self._git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False)
            if result.returncode == 0:
                return result.stdout.decode().strip()
            if attempt == 0:
                await self.fetch(None)
        raise SourceError(f"commit {revision} not found in {self.spec.url} ({self.spec.follows})")

    async def tree_id(self, sha: str) -> str:
        """Object id of SYNC_ROOT at `sha`; "" when the directory does not exist there."""
        spec = f"{sha}:{self.spec.sync_root}" if self.spec.sync_root else f"{sha}^{{tree}}"
        # One process instead of two (rev-parse, then cat-file -t): each git spawn is ~5 ms of a push's sync.
        # The answer is "<oid> <type> <size>", or "<name> missing" / "<name> ambiguous".
        result = await self._git("cat-file", "--batch-check", stdin=f"{spec}\n".encode(), check=False)
        fields = result.stdout.decode("utf-8", "replace").strip().split(" ")
        if result.returncode != 0 or len(fields) != 3 or fields[1] != "tree" or not _SHA.fullmatch(fields[0]):
            return ""
        return fields[0]

    async def read(self, sha: str, *, max_file_bytes: int = MAX_FILE_BYTES) -> Tree:
        """Files under SYNC_ROOT at `sha`, read from objects (no working tree)."""
        tree_id = await self.tree_id(sha)
        if not tree_id:
            return Tree(revision=sha, tree_id="", files={}, sync_root=self.spec.sync_root)
        listing = await self._git("ls-tree", "-r", "-z", "--long", tree_id)
        entries = self._entries(listing.stdout)
        wanted = [oid for _, oid, size, _ in entries if size <= max_file_bytes]
        known = self._blobs
        blobs = await cat_blobs([oid for oid in wanted if oid not in known], self.mirror, self._git_env(),
                                self.spec.git_timeout, self._cat_failed, self._cat_missing)  # streamed: catfile.py
        blobs.update((oid, known[oid]) for oid in wanted if oid in known)
        self._blobs = blobs  # a new commit usually shares most files with the last one read
        files = {path: SourceFile(path=path, data=blobs.get(oid, b"") if size <= max_file_bytes else b"", mode=mode,
                                  size=size)
                 for mode, oid, size, path in entries}
        return Tree(revision=sha, tree_id=tree_id, files=files, sync_root=self.spec.sync_root)

    @staticmethod
    def _entries(listing: bytes) -> list[tuple[str, str, int, str]]:
        """`ls-tree -r -z --long` output as (mode, oid, size, path) of the blobs."""
        entries: list[tuple[str, str, int, str]] = []
        for record in listing.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, oid, size = meta.decode().split()
            if kind != "blob":  # submodules have no content here
                continue
            entries.append((mode, oid, int(size), raw_path.decode("utf-8", "surrogateescape")))
        return entries

    def drop_cache(self) -> None:
        """Forget the blobs of the last tree read (benchmarks measure a first read with it)."""
        self._blobs = {}

    def _cat_missing(self, oid: str) -> SourceError:
        return SourceError(f"object {oid} missing from the mirror of {self.spec.url}")

    def _cat_failed(self, stderr: str) -> SourceError:
        return SourceError(f"git cat-file failed for {self.spec.url}: {git_error(self._redact(stderr))}")

    async def read_path(self, sha: str, path: str) -> bytes | None:
        """One file at `sha` by its repository path, also outside SYNC_ROOT (the Sesam variables file);
        None when there is no such file."""
        result = await self._git("cat-file", "blob", f"{sha}:{path}", check=False)
        return result.stdout if result.returncode == 0 else None

    async def commit_info(self, sha: str) -> CommitInfo:
        result = await self._git("log", "-1", "--format=%H%x00%s%x00%an%x00%ct", sha, check=False)
        if result.returncode != 0:
            return CommitInfo(sha=sha, message="", author="", timestamp=0)
        parts = result.stdout.decode("utf-8", "replace").rstrip("\n").split("\0")
        return CommitInfo(sha=parts[0], message=parts[1], author=parts[2], timestamp=int(parts[3] or 0))

    async def export(self, sha: str, dest: Path) -> None:
        """Write the files of SYNC_ROOT at `sha` into `dest` (for the command target)."""
        tree = await self.read(sha, max_file_bytes=1 << 62)
        for file in tree.files.values():
            if file.is_symlink or ".." in file.path.split("/"):
                continue  # never recreate links or paths that could point outside the tree
            path = dest / file.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(file.data)
            if file.mode == "100755":
                path.chmod(0o755)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


# ssh's own words for its two usual refusals, which git reports only as "Could not read from remote"
_SSH_REFUSALS = (
    ("Host key verification failed",
     "SSH host key verification failed: the server's host key is not in GIT_KNOWN_HOSTS (known_hosts in YAML) "
     "or does not match it; host keys are always checked"),
    ("Permission denied (publickey",
     "SSH authentication failed (Permission denied (publickey)): the deploy key (DEPLOY_TOKEN or GIT_SSH_KEY) "
     "is not accepted for this repository"),
)


def git_error(text: str) -> str:
    """git's own reason: ssh's refusal when ssh refused, else git's first `error:` or `fatal:` line
    (the lines after it are advice), else the last line of its output."""
    for needle, reason in _SSH_REFUSALS:
        if needle in text:
            return reason
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("error:", "fatal:")):
            return line
    return lines[-1] if lines else "no error output"


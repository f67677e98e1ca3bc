"""Signed commits only, when asked (VERIFY_COMMITS): a commit not signed by a trusted key is refused.

Flux and Argo CD can refuse commits that are not signed by a trusted key; for a deployer that rewrites
production from whatever lands on a branch this is the one check that does not trust the Git host.

The trusted keys come from one file (TRUSTED_KEYS_FILE): ASCII-armoured GPG public keys and/or the lines
of an SSH allowed-signers file, told apart by their content. They are imported, at start, into a
PRIVATE GNUPGHOME under STATE_DIR (never the user's ~/.gnupg), named after a digest of the file, so a
key removed from the file is no longer trusted after a restart and two processes sharing STATE_DIR (the
service and a CLI run) share one keyring that neither rebuilds under the other. Each process holds a
shared flock on its keyring's `users` file; keyrings no live process holds (keys since changed) are
removed when a process builds its own, so STATE_DIR does not collect one per edit of the keys file. Imported keys get
ultimate ownertrust: being in the file is what trusts them. gpg runs with `no-autostart`, so no agent
or dirmngr process is ever left behind.

Signatures are checked by git itself (`git log --format=%G?...`), which runs gpg with that home for
OpenPGP signatures and `ssh-keygen -Y verify` with `gpg.ssh.allowedSignersFile` for SSH ones. Only
`G` (a good signature by a trusted key) passes; a bad (`B`), untrusted (`U`, `E`), expired (`X`,
`Y`), revoked (`R`) or missing (`N`) signature refuses the commit, naming it and its signer or key.
Results are kept per commit: commits are immutable and the keys do not change while a process runs.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from ..errors import ConfigError, Refused, SourceError

ENV_KEYS = "TRUSTED_KEYS_FILE"
ENV_MODE = "VERIFY_COMMITS"
_GPG_BLOCK = re.compile(r"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----", re.S)
_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----")
_SSH_KEY_TYPES = (r"(?:ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh\.com"
                  r"|sk-ecdsa-sha2-nistp256@openssh\.com)")
_SIGNER_LINE = re.compile(rf"^\S.*?\s{_SSH_KEY_TYPES}\s+[A-Za-z0-9+/]+={{0,3}}(?:\s.*)?$")
_BARE_SSH_KEY = re.compile(rf"^{_SSH_KEY_TYPES}\s")
ModeName = Literal["off", "head", "all"]
_MAX_CACHE = 4096  # verdicts kept per keyring; a process sees far fewer commits than this between restarts

# git's %G? letters, in words an operator can act on
_STATUS = {
    "G": "good signature",
    "B": "bad signature (the commit was changed after it was signed)",
    "U": "signed by a key that is not trusted (not in TRUSTED_KEYS_FILE)",
    "X": "signature has expired",
    "Y": "signed by an expired key",
    "R": "signed by a revoked key",
    "E": "signed by a key that is not trusted (not in TRUSTED_KEYS_FILE), or the signature cannot be checked",
    "N": "no signature",
}


class VerifyMode(str, enum.Enum):
    """Which commits must be signed: none, the one deployed, or every commit the deploy brings in."""

    OFF = "off"
    HEAD = "head"
    ALL = "all"


def parse_mode(value: Any, where: str = ENV_MODE) -> ModeName:
    """off, head or all. YAML reads a bare `off` as false, so false means off too; anything else is an error."""
    try:
        return mode_value(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def mode_value(value: Any) -> ModeName:
    """The policy field's validator (pydantic wants a ValueError; its message gets the YAML key)."""
    if value is False or value is None:
        return "off"
    text = value.strip().lower() if isinstance(value, str) else ""
    if text not in {m.value for m in VerifyMode}:
        raise ValueError(f"expected off, head or all, got {value!r}")
    return cast(ModeName, text)


def trusted_keys_path(value: Any, where: str = ENV_KEYS) -> str | None:
    """The configured file as an absolute path, its content checked now (a start-up error naming it)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a file path, got {type(value).__name__}")
    return str(read_trusted_keys(value.strip(), where).path)


# --------------------------------------------------------------------------- the trusted keys file
@dataclass(frozen=True)
class TrustedKeys:
    """The content of TRUSTED_KEYS_FILE, split by kind: GPG armoured blocks and SSH allowed-signers lines."""

    path: Path
    gpg_blocks: tuple[str, ...]
    ssh_signers: tuple[str, ...]

    @property
    def digest(self) -> str:
        """Names the keyring built from this content: the same keys, the same keyring."""
        text = "\n".join(self.gpg_blocks) + "\0" + "\n".join(self.ssh_signers)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_trusted_keys(path: str | os.PathLike[str], where: str = ENV_KEYS) -> TrustedKeys:
    """The file, checked: missing, empty, a private key, or a line that is no key is an error naming it."""
    file = Path(path).expanduser().resolve()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise ConfigError(f"{where}: cannot read {file}: {reason}") from None
    if _PRIVATE.search(text):
        raise ConfigError(f"{where} {file}: contains a PRIVATE key; give only public keys (gpg --armor --export, "
                          "or the allowed-signers lines of ssh public keys)")
    blocks = tuple(m.group(0) for m in _GPG_BLOCK.finditer(text))
    rest = _GPG_BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keeps line numbers
    signers = tuple(_signer_lines(rest, file, where))
    if not blocks and not signers:
        raise ConfigError(f"{where} {file}: no keys in it: expected ASCII-armoured GPG public keys "
                          "(gpg --armor --export) and/or SSH allowed-signers lines (PRINCIPALS KEY-TYPE KEY)")
    return TrustedKeys(file, blocks, signers)


def _signer_lines(text: str, file: Path, where: str) -> list[str]:
    lines: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _BARE_SSH_KEY.match(line):
            raise ConfigError(f"{where} {file} line {number}: an SSH public key without principals; an allowed-"
                              "signers line starts with who may sign (e.g. alice@example.org ssh-ed25519 AAAA...)")
        if "-----BEGIN PGP" in line or "-----END PGP" in line:
            raise ConfigError(f"{where} {file} line {number}: an incomplete ASCII-armoured GPG block")
        if not _SIGNER_LINE.match(line):
            raise ConfigError(f"{where} {file} line {number}: neither part of an ASCII-armoured GPG public key "
                              "nor an SSH allowed-signers line (PRINCIPALS [OPTIONS] KEY-TYPE KEY)")
        lines.append(line)
    return lines


def require_keys(mode: str, keys_file: str | None, where_mode: str, where_keys: str) -> None:
    """VERIFY_COMMITS=head|all without trusted keys would refuse every commit: a start-up error instead."""
    if mode != VerifyMode.OFF.value and not keys_file:
        raise ConfigError(f"{where_mode} is {mode!r} but {where_keys} is not set: name the file of trusted keys "
                          "(GPG public keys and/or SSH allowed signers)")


# --------------------------------------------------------------------------- the private keyring
@dataclass(frozen=True)
class Keyring:
    """A built GNUPGHOME and allowed-signers file under STATE_DIR/signatures/<digest>."""

    home: Path

    @property
    def gnupghome(self) -> Path:
        return self.home / "gnupg"

    @property
    def allowed_signers(self) -> Path:
        return self.home / "allowed_signers"


def build_keyring(keys: TrustedKeys, state_dir: Path, where: str = ENV_KEYS) -> Keyring:
    """The keyring of these keys, built once (in a temporary directory renamed into place, so a process
    never sees a half-built one) and reused by every later start with the same keys."""
    parent = state_dir / "signatures"
    ring = Keyring(parent / keys.digest)
    if (ring.home / "ready").exists():
        return ring
    try:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=parent))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot create the keyring in {parent}: {exc.strerror}") from None
    try:
        _fill(Keyring(tmp), keys, where)
        try:
            tmp.rename(ring.home)
        except OSError:
            if not (ring.home / "ready").exists():  # another process's rename won the race: that one is used
                raise
    except OSError as exc:
        raise ConfigError(f"{where}: cannot create the keyring in {parent}: {exc.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ring


def _fill(ring: Keyring, keys: TrustedKeys, where: str) -> None:
    ring.gnupghome.mkdir(mode=0o700)
    (ring.gnupghome / "gpg.conf").write_text("no-autostart\n")  # git's gpg never starts an agent either
    ring.allowed_signers.write_text("".join(line + "\n" for line in keys.ssh_signers))
    if keys.gpg_blocks:
        for number, block in enumerate(keys.gpg_blocks, 1):
            _import(ring, block, number, keys.path, where)
        fingerprints = _primary_fingerprints(_gpg(ring, ["--list-keys", "--with-colons"], "", keys.path, where))
        if not fingerprints:
            raise ConfigError(f"{where} {keys.path}: gpg imported no key from its armoured blocks")
        trust = "".join(f"{fpr}:6:\n" for fpr in fingerprints)  # 6 = ultimate: the file is the trust
        _gpg(ring, ["--import-ownertrust"], trust, keys.path, where)
    (ring.home / "ready").write_text("")


def _import(ring: Keyring, block: str, number: int, file: Path, where: str) -> None:
    """One armoured block (gpg rejects a whole batch for one bad block: each is imported on its own, so
    the error can say which). gpg exits 2 on a good import too, for want of an agent it must not start,
    so the status line counting what it processed decides."""
    status = _gpg(ring, ["--status-fd", "1", "--import"], block + "\n", file, where, check=False)
    counts = next((line.split()[2:] for line in status.splitlines() if line.startswith("[GNUPG:] IMPORT_RES ")),
                  ["0"])
    if int(counts[0]) == 0:
        raise ConfigError(f"{where} {file}: gpg cannot read armoured block {number} (of the GPG public keys)")


def _gpg(ring: Keyring, args: list[str], stdin: str, file: Path, where: str, *, check: bool = True) -> str:
    env = {**_clean_env(), "GNUPGHOME": str(ring.gnupghome)}
    try:
        done = subprocess.run(["gpg", "--batch", "--no-tty", "--no-autostart", *args], input=stdin, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{where}: cannot run gpg to import {file} ({exc}); install Debian's gnupg") from None
    if check and done.returncode != 0:
        reason = next((ln for ln in done.stderr.splitlines() if "error" in ln.lower() or "invalid" in ln.lower()),
                      done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no error output")
        raise ConfigError(f"{where} {file}: gpg cannot import its keys: {reason}")
    return done.stdout


def _primary_fingerprints(colons: str) -> list[str]:
    """The fingerprint line that follows each `pub` line of `--with-colons` output (not the subkeys')."""
    found: list[str] = []
    after_pub = False
    for line in colons.splitlines():
        kind = line.split(":", 1)[0]
        if kind == "pub":
            after_pub = True
        elif kind == "fpr" and after_pub:
            found.append(line.split(":")[9])
            after_pub = False
    return found


def _clean_env() -> dict[str, str]:
    """The process environment without git's and gpg's variables, so nothing outside STATE_DIR is read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GNUPG", "GPG_"))}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


# --------------------------------------------------------------------------- checking commits
@dataclass(frozen=True)
class Signature:
    """What git says of one commit's signature."""

    sha: str
    status: str  # git's %G? letter
    key: str  # %GK: GPG key id, or the SSH key's SHA256 fingerprint
    signer: str  # %GS: the GPG user id, or the SSH principal

    @property
    def good(self) -> bool:
        return self.status == "G"

    @property
    def kind(self) -> str | None:
        """gpg or ssh (git prints SSH keys as their SHA256 fingerprint); None when unsigned."""
        if self.status == "N":
            return None
        return "ssh" if self.key.startswith("SHA256:") else "gpg"

    def to_dict(self) -> dict[str, Any]:
        """SyncResult.details["signature"]: who signed the deployed commit."""
        return {"signer": self.signer or None, "key": self.key or None, "kind": self.kind, "trusted": self.good}

    def problem(self) -> str:
        """Why this commit is refused, naming it and its signer or key."""
        who = ""
        if self.status != "N":
            who = f" by {self.kind} key {self.key or '(unknown)'}" + (f" ({self.signer})" if self.signer else "")
        return f"commit {self.sha[:12]}: {_STATUS.get(self.status, f'signature status {self.status!r}')}{who}"


class UnsignedCommit(Refused):
    """VERIFY_COMMITS refused a commit: not signed by a trusted key. Nothing was applied."""


class CommitVerifier:
    """Checks the commits a sync would deploy against the trusted keys, in one repository's mirror."""

    def __init__(self, mode: str, ring: Keyring, *, timeout: float = 120.0) -> None:
        self.mode = VerifyMode(mode)
        self.ring = ring
        self.timeout = timeout
        self._known: dict[str, Signature] = {}

    def known(self, sha: str | None) -> Signature | None:
        """The signature already checked of this commit (no process), if it has one: what the record step
        shows (a refused commit's untrusted signer too; an unsigned commit has none to show)."""
        found = self._known.get(sha) if sha else None
        return found if found is not None and found.kind is not None else None

    async def check(self, mirror: Path, sha: str, live: str | None) -> Signature:
        """The signature of `sha`, or UnsignedCommit naming the first commit that is not signed by a
        trusted key: `sha` alone (head), or every commit in live..sha (all; just `sha` without a live
        revision, or when the live revision is not in the mirror)."""
        shas = [sha]
        if self.mode is VerifyMode.ALL and live and live != sha and await self._has(mirror, live):
            shas = await self._range(mirror, live, sha) or [sha]
            if sha not in shas:
                shas.append(sha)  # a rollback: the older commit itself is checked
        verdicts = await self._verdicts(mirror, shas)
        bad = [v for v in verdicts if not v.good]
        if bad:
            first = bad[0]
            where = ""
            if len(shas) > 1:
                where = (f" ({shas.index(first.sha) + 1} of the {len(shas)} commits since the live revision "
                         f"{(live or '')[:12]})")
            more = f"; {len(bad) - 1} more not signed by a trusted key" if len(bad) > 1 else ""
            raise UnsignedCommit(f"refused by VERIFY_COMMITS={self.mode.value}: {first.problem()}{where}{more}")
        return verdicts[shas.index(sha)]

    async def check_pull(self, mirror: Path, revision: str, base: str | None = None) -> Signature:
        """A pull request's preview: the planned revision is usually the host's test merge, which nobody
        signed, so the PR's own commits decide. `revision` with two parents is such a merge (first parent
        the base, second the PR head); otherwise it is the head itself and `base` (the live revision, when
        known) bounds `all`. head: the PR head must be signed; all: every commit of base..head too."""
        parents = (await self._git(mirror, "rev-list", "--parents", "-n", "1", revision)).split()
        head = parents[2] if len(parents) >= 3 else revision
        base = parents[1] if len(parents) >= 3 else base
        shas = [head]
        if self.mode is VerifyMode.ALL and base and base != head and await self._has(mirror, base):
            shas = await self._range(mirror, base, head) or [head]
            if head not in shas:
                shas.append(head)
        verdicts = await self._verdicts(mirror, shas)
        bad = [v for v in verdicts if not v.good]
        if bad:
            first = bad[0]
            what = "the pull request's head" if first.sha == head else (
                f"{shas.index(first.sha) + 1} of the pull request's {len(shas)} commits")
            more = f"; {len(bad) - 1} more not signed by a trusted key" if len(bad) > 1 else ""
            raise UnsignedCommit(f"refused by VERIFY_COMMITS={self.mode.value}: {first.problem()} ({what}){more}")
        return verdicts[shas.index(head)]

    async def _verdicts(self, mirror: Path, shas: list[str]) -> list[Signature]:
        missing = [s for s in shas if s not in self._known]
        if missing:
            if len(self._known) + len(missing) > _MAX_CACHE:
                self._known.clear()
                missing = list(dict.fromkeys(shas))
            out = await self._git(mirror, "log", "--no-walk=unsorted", "--stdin",
                                  "--format=%H%x1f%G?%x1f%GK%x1f%GS%x1e", stdin="\n".join(missing) + "\n")
            for record in out.split("\x1e"):
                fields = record.strip("\n").split("\x1f")
                if len(fields) == 4:
                    self._known[fields[0]] = Signature(fields[0], fields[1], fields[2], fields[3])
        lost = [s for s in shas if s not in self._known]
        if lost:
            raise SourceError(f"cannot read the signature of commit {lost[0][:12]} from the mirror")
        return [self._known[s] for s in shas]  # complete: the cache was cleared before, never after, the read

    async def _range(self, mirror: Path, live: str, sha: str) -> list[str]:
        """Every commit reachable from `sha` but not from the live revision, oldest first."""
        out = await self._git(mirror, "rev-list", "--reverse", sha, "--not", live)
        return out.split()

    async def _has(self, mirror: Path, sha: str) -> bool:
        try:
            await self._git(mirror, "cat-file", "-e", f"{sha}^{{commit}}")
        except SourceError:
            return False
        return True

    def _config(self) -> list[str]:
        """Settings that make git check against the trusted keys only, whatever the mirror's config says."""
        return ["-c", "gpg.program=gpg", "-c", "gpg.ssh.program=ssh-keygen",
                "-c", f"gpg.ssh.allowedSignersFile={self.ring.allowed_signers}", "-c", "log.showSignature=false"]

    async def _git(self, mirror: Path, *args: str, stdin: str | None = None) -> str:
        env = {**_clean_env(), "GNUPGHOME": str(self.ring.gnupghome)}
        try:
            proc = await asyncio.create_subprocess_exec(
                "git", "--git-dir", str(mirror), *self._config(), *args, env=env,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise SourceError(f"cannot run git to verify signatures: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None),
                                              self.timeout)
        except (TimeoutError, asyncio.CancelledError):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            line = err.decode("utf-8", "replace").strip().splitlines()
            raise SourceError(f"git {args[0]} failed while verifying signatures: {line[-1] if line else 'no output'}")
        return out.decode("utf-8", "replace")


# --------------------------------------------------------------------------- who uses a keyring
USERS_FILE = "users"  # every process using a keyring holds a shared flock on it
BUILD_LEFTOVER_AGE = 3600.0  # seconds after which a `.build-*` directory is a killed build's leftover


def hold_keyring(ring: Keyring) -> int | None:
    """A shared flock on the keyring's users file, held while the returned descriptor is open; None when
    the keyring went away meanwhile (pruned by another process between its build and this call)."""
    try:
        fd = os.open(ring.home / USERS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    if not (ring.home / "ready").exists():  # a pruner removes `ready` first, holding the exclusive lock
        os.close(fd)
        return None
    return fd


def prune_keyrings(parent: Path, keep: set[Path], now: float) -> list[str]:
    """Remove the keyrings under `parent` no live process holds, except `keep`; the names removed."""
    removed: list[str] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for home in entries:
        if home in keep or not home.is_dir():
            continue
        if home.name.startswith(".build-"):  # a build a killed process left (a live one renames it soon)
            if now - home.stat().st_mtime > BUILD_LEFTOVER_AGE:
                shutil.rmtree(home, ignore_errors=True)
                removed.append(home.name)
            continue
        try:
            fd = os.open(home / USERS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live process verifies with it
            os.close(fd)
            continue
        try:
            (home / "ready").unlink(missing_ok=True)
            shutil.rmtree(home, ignore_errors=True)
            removed.append(home.name)
        finally:
            os.close(fd)
    return removed


# --------------------------------------------------------------------------- wiring
class Keyrings:
    """The keyrings of one process, one per distinct trusted keys file content, built at start. Each is
    held (a shared flock) for the life of the process; keyrings of earlier keys nobody holds are removed."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._rings: dict[Path, Keyring] = {}
        self._held: dict[Path, int] = {}  # keyring home -> the descriptor holding its users file

    def _ring(self, keys: TrustedKeys) -> Keyring:
        for _ in range(3):  # pruned by another process between build and hold: built again
            ring = build_keyring(keys, self.state_dir)
            if ring.home in self._held:
                return ring
            fd = hold_keyring(ring)
            if fd is not None:
                self._held[ring.home] = fd
                prune_keyrings(ring.home.parent, set(self._held), time.time())
                return ring
        raise ConfigError(f"{ENV_KEYS} {keys.path}: the keyring in {self.state_dir / 'signatures'} keeps "
                          "disappearing (another process removes it)")

    def close(self) -> None:
        """Let go of the keyrings (the process stops; exiting does the same)."""
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()

    def verifier(self, mode: str, keys_file: str | None, *, timeout: float = 120.0) -> CommitVerifier | None:
        """The app's verifier; None when VERIFY_COMMITS is off. Errors name the keys file (start-up)."""
        if VerifyMode(mode) is VerifyMode.OFF:
            return None
        require_keys(mode, keys_file, ENV_MODE, ENV_KEYS)
        assert keys_file is not None
        path = Path(keys_file).expanduser().resolve()
        ring = self._rings.get(path)
        if ring is None:
            ring = self._rings[path] = self._ring(read_trusted_keys(path))
        return CommitVerifier(mode, ring, timeout=timeout)

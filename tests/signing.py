"""Real signing keys for the signed-commit tests: GPG (ed25519, no passphrase, in a temporary GNUPGHOME)
and SSH (ssh-keygen -t ed25519), and signed commits made with them by git itself.

The GNUPGHOME is a short path under /tmp: gpg-agent (which signing needs) puts its socket there, and a
socket path must stay under ~107 bytes. `close()` stops that agent and removes the home.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from autodeployer_emulators.gitserver import WorkRepo, git_env, run_git


class GpgSigner:
    """A GPG key pair of its own; `armor` is the public key as TRUSTED_KEYS_FILE takes it."""

    def __init__(self, name: str, email: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="gpg", dir="/tmp"))
        self.home.chmod(0o700)
        self.uid = f"{name} <{email}>"
        self._gpg("--passphrase", "", "--quick-gen-key", self.uid, "ed25519", "sign", "never")
        colons = self._gpg("--list-keys", "--with-colons", email)
        self.fingerprint = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr"))
        self.key_id = self.fingerprint[-16:]
        self.armor = self._gpg("--armor", "--export", email)

    def _gpg(self, *args: str) -> str:
        return subprocess.run(["gpg", "--batch", "--no-tty", *args], env=self.env(), capture_output=True,
                              text=True, check=True, timeout=60).stdout

    def env(self) -> dict[str, str]:
        return git_env({"GNUPGHOME": str(self.home)})

    def git_config(self) -> list[str]:
        return ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={self.fingerprint}"]

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env(), capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


class SshSigner:
    """An SSH key pair; `allowed` is its allowed-signers line for `principal`."""

    def __init__(self, directory: Path, name: str, principal: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.key = directory / f"id_{name}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.key)],
                       check=True, capture_output=True, timeout=60)
        self.public = self.key.with_suffix(".pub").read_text().strip()
        self.principal = principal
        self.allowed = f"{principal} {self.public}"
        fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", str(self.key)], capture_output=True, text=True,
                                     check=True, timeout=60).stdout.split()[1]
        self.fingerprint = fingerprint  # SHA256:...

    def env(self) -> dict[str, str]:
        return git_env()

    def git_config(self) -> list[str]:
        return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.key}"]

    def close(self) -> None:
        pass


Signer = GpgSigner | SshSigner


def signed_commit(repo: WorkRepo, signer: Signer | None, message: str, files: dict[str, str] | None = None) -> str:
    """Commit `files` (and any other change in the tree), signed by `signer` (unsigned when None)."""
    if files:
        repo.write(dict(files))
    repo.git("add", "-A")
    config = signer.git_config() if signer else []
    sign = ["-S"] if signer else ["--no-gpg-sign"]
    repo.git(*config, "commit", "-q", "--no-verify", "--allow-empty", *sign, "-m", message,
             env=signer.env() if signer else None)
    return repo.head


def amend_unsigned(repo: WorkRepo, message: str) -> str:
    """`git commit --amend` of a signed commit without signing again: the new commit has no signature."""
    repo.git("commit", "-q", "--amend", "--no-gpg-sign", "--allow-empty", "-m", message)
    return repo.head


def tampered(repo: WorkRepo, sha: str, message: str) -> str:
    """A copy of a signed commit with another message but the original signature header: a BAD signature."""
    raw = repo.git("cat-file", "commit", sha)
    head, _, _old = raw.partition("\n\n")
    done = run_git("hash-object", "-t", "commit", "-w", "--stdin", cwd=repo.work_dir,
                   input=f"{head}\n\n{message}\n".encode())
    return done.stdout.decode().strip()

"""Keyed fingerprints of secret values: notice a changed value without storing the value.

Secret values are write-only on the node, so the deployer remembers what it last sent as
``HMAC-SHA256(key, name NUL value)``. The key is random, kept in ``STATE_DIR`` with mode 0600 and
never leaves the machine, so a fingerprint in the history database cannot be brute-forced against
a list of likely passwords by someone who only has the database. The name is part of the message
so that two secrets with the same value do not share a fingerprint.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from hashlib import sha256
from pathlib import Path

__all__ = ["KEY_FILE", "FingerprintKeyError", "Fingerprinter"]

KEY_FILE = "secret-fingerprint.key"
_KEY_HEX_CHARS = 64


class FingerprintKeyError(Exception):
    """The key file exists but cannot be used; names the file."""


class Fingerprinter:
    """Computes fingerprints with one key. ``repr`` never shows the key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("fingerprint key must be at least 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Fingerprinter(key=<hidden>)"

    @classmethod
    def from_state_dir(cls, state_dir: Path | str) -> Fingerprinter:
        """Load the key from ``state_dir``, creating it (0600) on first use.

        Creation is atomic (write a private temporary file, then hard-link it into place), so two
        processes starting together agree on one key and neither ever reads a half-written file.
        """
        path = Path(state_dir) / KEY_FILE
        if not path.exists():
            _create_key(path)
        return cls(_read_key(path))

    def fingerprint(self, name: str, value: str) -> str:
        """``hmac-sha256:<hex>`` of ``name`` and ``value``."""
        message = name.encode("utf-8") + b"\0" + value.encode("utf-8")
        return "hmac-sha256:" + hmac.new(self._key, message, sha256).hexdigest()

    def matches(self, name: str, value: str, fingerprint: str | None) -> bool:
        """True when ``value`` is what ``fingerprint`` was computed from (constant-time compare)."""
        if fingerprint is None:
            return False
        return hmac.compare_digest(self.fingerprint(name, value), fingerprint)


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: use its key
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _read_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            # Tighten rather than refuse: a volume restored with loose modes should still start.
            os.chmod(path, 0o600)
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FingerprintKeyError(f"fingerprint key {path}: cannot read it ({exc})") from None
    if len(text) != _KEY_HEX_CHARS or any(c not in "0123456789abcdef" for c in text):
        raise FingerprintKeyError(
            f"fingerprint key {path}: not {_KEY_HEX_CHARS} hex characters; delete it to make a "
            "new key (every secret is then uploaded once more)"
        )
    return bytes.fromhex(text)

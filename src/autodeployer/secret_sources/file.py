"""Secrets from a JSON file (``SECRETS_FILE``): one object of ``name → string``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from autodeployer.secret_sources.base import SecretSourceError, check_name, check_value

__all__ = ["FileSecretSource"]


class FileSecretSource:
    """Reads the file on every call, so an edited file is seen in the next cycle without restart.

    The file is small and read once per secret per cycle; the cost is a few microseconds.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileSecretSource({str(self.path)!r})"

    def describe(self) -> str:
        return f"secrets file {self.path}"

    def _load(self) -> dict[str, object]:
        source = self.describe()
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise SecretSourceError(source, f"cannot read it ({exc.strerror})") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SecretSourceError(source, "not UTF-8 text") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            # The decoder's message names a position only; the offending text is never quoted.
            where = f"line {exc.lineno} column {exc.colno}"
            raise SecretSourceError(source, f"not valid JSON ({exc.msg} at {where})") from None
        if not isinstance(data, dict):
            raise SecretSourceError(
                source, f"must be a JSON object of name to string, got a {type(data).__name__}"
            )
        return data

    async def get(self, name: str) -> str:
        source = self.describe()
        check_name(source, name)
        data = self._load()
        if name not in data:
            raise SecretSourceError(source, "not found", name)
        return check_value(source, name, data[name])

    async def names(self) -> list[str]:
        return sorted(self._load())

    def permissions_warning(self) -> str | None:
        """A notice when others may read the file (the deployer still works; the user decides)."""
        try:
            mode = os.stat(self.path).st_mode
        except OSError:
            return None
        if mode & 0o077:
            return f"{self.describe()} is readable by group or others (mode {mode & 0o777:o})"
        return None

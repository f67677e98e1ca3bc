"""Secrets from environment variables ``SECRET_<name>``, for users without Vault."""

from __future__ import annotations

import re
from collections.abc import Mapping

from autodeployer.secret_sources.base import SecretSourceError, check_name, check_value

__all__ = ["PREFIX", "EnvSecretSource"]

PREFIX = "SECRET_"


def _fallback_key(name: str) -> str:
    """``db-password`` → ``SECRET_DB_PASSWORD``: names a shell cannot export still have a form."""
    return PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", name).upper()


class EnvSecretSource:
    """Reads ``SECRET_<name>`` exactly, else ``SECRET_<NAME>`` upper-cased with ``_`` for other
    characters. The mapping is copied at construction, so later changes to it are not seen."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._values = {k: v for k, v in environ.items() if k.startswith(PREFIX) and len(k) > 7}

    def __repr__(self) -> str:
        return f"EnvSecretSource({len(self._values)} SECRET_* variables)"

    def describe(self) -> str:
        return f"environment variables {PREFIX}<name> ({len(self._values)} set)"

    async def get(self, name: str) -> str:
        source = self.describe()
        check_name(source, name)
        for key in (PREFIX + name, _fallback_key(name)):
            if key in self._values:
                return check_value(f"environment variable {key}", name, self._values[key])
        raise SecretSourceError(
            source, f"not found (set {PREFIX + name} or {_fallback_key(name)})", name
        )

    async def names(self) -> list[str]:
        return sorted(key[len(PREFIX):] for key in self._values)

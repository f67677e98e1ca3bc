"""The protocol every secret source implements, and the one error they raise.

A secret value must never leave the source except as the return value of :meth:`SecretSource.get`:
errors name the secret and the source, describe what went wrong, and never quote the value.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

__all__ = ["SecretSource", "SecretSourceError", "check_name", "check_value"]

#: What ``$SECRET(name)`` can hold (the node's pattern: no space, no parenthesis); also keeps a
#: name from walking out of a Vault prefix or an environment-variable namespace.
_NAME = re.compile(r"[^\s()/\\]+")


class SecretSourceError(Exception):
    """A secret could not be read: names the secret (when one was asked for) and the source."""

    def __init__(self, source: str, reason: str, name: str | None = None) -> None:
        self.source = source
        self.secret_name = name
        self.reason = reason
        subject = f"secret {name!r} from {source}" if name is not None else source
        super().__init__(f"{subject}: {reason}")


@runtime_checkable
class SecretSource(Protocol):
    """Gives secret values by name. Implementations are safe to ``repr`` and to log."""

    async def get(self, name: str) -> str:
        """The value of ``name``: a non-empty string, else :class:`SecretSourceError`."""
        ...

    async def names(self) -> list[str] | None:
        """Names the source holds, sorted; ``None`` when the source cannot list them."""
        ...

    def describe(self) -> str:
        """One line naming the source and where it reads from, never a value or credential."""
        ...


def check_name(source: str, name: str) -> None:
    """Refuse a name that ``$SECRET(...)`` could not hold or that would escape a path prefix."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise SecretSourceError(source, "not a valid secret name", name)


def check_value(source: str, name: str, value: object) -> str:
    """Accept a non-empty string; say only the type of anything else (never the value)."""
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise SecretSourceError(source, f"value is not a string (it is {kind})", name)
    if not value:
        raise SecretSourceError(source, "value is empty", name)
    return value

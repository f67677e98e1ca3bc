"""Secrets from HashiCorp Vault KV version 2, through ``hvac`` (the client upstream used).

``hvac`` is synchronous, so each read runs in a worker thread, bounded twice: ``requests`` gets the
timeout for connect and each read, and ``asyncio.wait_for`` bounds the whole call, so a Vault that
dribbles bytes cannot hold a cycle either. Upstream conventions are kept: the path is
``VAULT_PATH_PREFIX`` + name, and the value is the *first* value of the secret's data object.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import hvac  # type: ignore[import-untyped]  # no stubs ship with hvac
import hvac.exceptions  # type: ignore[import-untyped]
import requests

from autodeployer.secret_sources.base import SecretSourceError, check_name, check_value

__all__ = ["DEFAULT_TIMEOUT", "VaultSecretSource", "VaultSettings"]

DEFAULT_TIMEOUT = 10.0
DEFAULT_MOUNT = "secret"
_T = TypeVar("_T")


@dataclass(frozen=True)
class VaultSettings:
    """Where and how to read. Credentials are excluded from ``repr``."""

    url: str
    mount: str = DEFAULT_MOUNT
    path_prefix: str = ""
    token: str | None = field(default=None, repr=False)
    github_token: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str = True

    @classmethod
    def from_variables(cls, values: Mapping[str, str]) -> VaultSettings | None:
        """``VAULT_URL`` (+ ``VAULT_TOKEN`` or ``VAULT_GIT_TOKEN``, ``VAULT_MOUNTING_POINT``,
        ``VAULT_PATH_PREFIX``) from the settings the caller read; ``None`` without ``VAULT_URL``;
        ``ValueError`` naming the variable when the set is incomplete.

        The service's settings registry owns reading the environment (and documenting it); this
        only interprets the values, so it takes a mapping rather than reading ``os.environ``.
        """
        url = values.get("VAULT_URL", "").strip()
        if not url:
            return None
        token = values.get("VAULT_TOKEN") or None
        github_token = values.get("VAULT_GIT_TOKEN") or None
        if token is None and github_token is None:
            raise ValueError("VAULT_URL is set but neither VAULT_TOKEN nor VAULT_GIT_TOKEN is")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("VAULT_URL must be an http(s) URL")
        if parsed.userinfo:
            raise ValueError("VAULT_URL must not carry credentials; use VAULT_TOKEN")
        mount = values.get("VAULT_MOUNTING_POINT", "").strip().strip("/") or DEFAULT_MOUNT
        return cls(
            url=url.rstrip("/"),
            mount=mount,
            path_prefix=values.get("VAULT_PATH_PREFIX", ""),
            token=token,
            github_token=github_token,
        )


class VaultSecretSource:
    """Reads ``<mount>/data/<prefix><name>`` and returns the first value of its data."""

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self._client = hvac.Client(
            url=settings.url, token=settings.token, timeout=settings.timeout,
            verify=settings.verify,
        )
        self._login_lock = threading.Lock()
        self._logged_in = settings.token is not None

    def __repr__(self) -> str:
        return f"VaultSecretSource({self.describe()!r})"

    def describe(self) -> str:
        s = self.settings
        auth = "token" if s.token is not None else "GitHub login"
        return f"Vault {s.url} mount {s.mount!r} prefix {s.path_prefix!r} ({auth})"

    async def get(self, name: str) -> str:
        check_name(self.describe(), name)
        data = await self._bounded(self._read, name, name)
        if not data:
            raise SecretSourceError(self._where(name), "the secret has no values", name)
        first = next(iter(data.values()))
        return check_value(self._where(name), name, first)

    async def names(self) -> list[str] | None:
        """Names under the prefix when the prefix is a folder (``.../``), else ``None``."""
        prefix = self.settings.path_prefix
        if prefix and not prefix.endswith("/"):
            return None
        keys = await self._bounded(self._list, prefix, None)
        return sorted(k for k in keys if not k.endswith("/"))

    # ---- internals: run in a worker thread ---------------------------------------------------

    def _where(self, name: str | None) -> str:
        path = self.settings.path_prefix + (name or "")
        return f"Vault {self.settings.url} path {self.settings.mount}/{path}"

    async def _bounded(
        self, call: Callable[[str], _T], argument: str, name: str | None
    ) -> _T:
        """Run ``call(argument)`` in a thread; ``name`` is the secret asked for, for messages."""
        limit = self.settings.timeout * 2 + 1  # login + read, each bounded by requests
        try:
            return await asyncio.wait_for(asyncio.to_thread(call, argument), limit)
        except TimeoutError:
            raise SecretSourceError(self._where(name), f"no answer within {limit:g} s", name) from None

    def _login(self, force: bool = False) -> None:
        with self._login_lock:
            if self._logged_in and not force:
                return
            github_token = self.settings.github_token
            if github_token is None:
                return
            try:
                self._client.auth.github.login(token=github_token, use_token=True)
            except hvac.exceptions.VaultError as exc:
                raise self._vault_error(None, exc, "GitHub login (VAULT_GIT_TOKEN)") from None
            except requests.exceptions.RequestException as exc:
                raise self._transport_error(None, exc) from None
            self._logged_in = True

    def _call(self, name: str | None, action: Callable[[], Any]) -> Any:
        """Log in if needed, run ``action``; a 403 after a GitHub login logs in once more, since
        the client token from the login expires while the GitHub token stays valid."""
        self._login()
        try:
            try:
                return action()
            except hvac.exceptions.Forbidden:
                if self.settings.github_token is None or self.settings.token is not None:
                    raise
                self._login(force=True)
                return action()
        except hvac.exceptions.VaultError as exc:
            raise self._vault_error(name, exc) from None
        except requests.exceptions.RequestException as exc:
            raise self._transport_error(name, exc) from None

    def _read(self, name: str) -> dict[str, Any]:
        path = self.settings.path_prefix + name
        answer = self._call(
            name,
            lambda: self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.settings.mount, raise_on_deleted_version=True
            ),
        )
        data = ((answer or {}).get("data") or {}).get("data")
        if not isinstance(data, dict):
            raise SecretSourceError(self._where(name), "the answer has no data object", name)
        return data

    def _list(self, prefix: str) -> list[str]:
        answer = self._call(
            None,
            lambda: self._client.secrets.kv.v2.list_secrets(
                path=prefix, mount_point=self.settings.mount
            ),
        )
        keys = ((answer or {}).get("data") or {}).get("keys")
        return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []

    def _vault_error(
        self, name: str | None, exc: hvac.exceptions.VaultError, what: str | None = None
    ) -> SecretSourceError:
        """Vault's own words (``errors``) are safe to show: they never carry a secret value."""
        status = {
            hvac.exceptions.InvalidRequest: 400, hvac.exceptions.Unauthorized: 401,
            hvac.exceptions.Forbidden: 403, hvac.exceptions.InvalidPath: 404,
            hvac.exceptions.InternalServerError: 500, hvac.exceptions.VaultDown: 503,
        }.get(type(exc))
        meaning = {
            403: "permission denied (the token may not read this path, or it has expired)",
            404: "not found",
            503: "Vault is sealed or down",
        }.get(status or 0, "Vault refused the request")
        said = "; ".join(str(e) for e in (exc.errors or []) if isinstance(e, str))[:200]
        reason = f"{meaning} (HTTP {status or '?'}{': ' + said if said else ''})"
        source = f"Vault {self.settings.url} {what}" if what else self._where(name)
        return SecretSourceError(source, reason, name)

    def _transport_error(
        self, name: str | None, exc: requests.exceptions.RequestException
    ) -> SecretSourceError:
        if isinstance(exc, requests.exceptions.Timeout):
            reason = f"no answer within {self.settings.timeout:g} s"
        elif isinstance(exc, requests.exceptions.ConnectionError):
            reason = "cannot connect"
        else:
            reason = f"request failed ({type(exc).__name__})"
        return SecretSourceError(self._where(name), reason, name)

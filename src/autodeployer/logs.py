"""Structured logging (structlog) with secrets redacted before anything is written.

Redaction works on values, not only on key names: every secret in the configuration is replaced
wherever it appears, so a token echoed inside a git error message is caught too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import structlog

REDACTED = "***"
_SECRET_KEYS = ("token", "jwt", "secret", "password", "authorization", "ssh_key")


class Redactor:
    """Replaces known secret values in strings; shared by logs, history and error messages."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        for secret in secrets:
            # Very short values would redact ordinary words; real tokens are long.
            if secret and len(secret) >= 6 and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(v) for v in value)
        return value

    def processor(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in list(event.items()):
            if any(word in key.lower() for word in _SECRET_KEYS) and value not in (None, ""):
                event[key] = REDACTED
            else:
                event[key] = self.value(value) if not isinstance(value, BaseException) else value
        return event


class _RedactingFormatter(logging.Formatter):
    """For stdlib loggers (uvicorn, httpx): redact the final line."""

    def __init__(self, redactor: Redactor, fmt: str) -> None:
        super().__init__(fmt)
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor(super().format(record))


def configure_logging(level: str = "info", fmt: str = "text", redactor: Redactor | None = None) -> None:
    redactor = redactor or Redactor()
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor.processor,
            _redact_rendered(redactor, renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter(redactor, "%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _redact_rendered(redactor: Redactor, renderer: Any) -> Any:
    def render(logger: Any, name: str, event: dict[str, Any]) -> str:
        return redactor(renderer(logger, name, event))

    return render


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("autodeployer").bind(**bound)

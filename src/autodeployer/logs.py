"""Structured logging (structlog) with secrets redacted before anything is written.

Redaction works on values, not only on key names: every secret in the configuration is replaced
wherever it appears, so a token echoed inside a git error message is caught too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
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


# Loggers of the libraries we run (uvicorn, httpx, asyncio, py.warnings) reach the same handler as
# our own structlog lines, so both pass through these steps before rendering.
def _shared_steps(redactor: Redactor) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor.processor,
    ]


def _foreign_logger_name(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Name the library a stdlib line comes from (`uvicorn.error`); our own lines carry none."""
    record = event.get("_record")
    if record is not None and not event.get("_from_structlog"):
        event.setdefault("logger", record.name)
        if isinstance(event.get("event"), str):  # uvicorn ends some messages with a newline
            event["event"] = event["event"].rstrip()
    return event


def _renderer(fmt: str) -> Any:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)


def configure_logging(level: str = "info", fmt: str = "text", redactor: Redactor | None = None) -> None:
    """One handler on stderr renders every line, ours and the libraries', in one format.

    structlog hands its events to the stdlib logger `autodeployer`, whose records reach the root
    handler like uvicorn's do; the handler's ProcessorFormatter renders both with the same
    renderer, so LOG_FORMAT=json gives one JSON object per line (tracebacks included) and text
    mode one layout. Python warnings are captured into the same stream.
    """
    redactor = redactor or Redactor()
    numeric = getattr(logging, level.upper(), logging.INFO)
    steps = _shared_steps(redactor)
    structlog.configure(
        processors=[*steps, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=steps,
        processors=[
            _foreign_logger_name,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact_rendered(redactor, _renderer(fmt)),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries' debug output is noise even at LOG_LEVEL=debug; our own logger follows LOG_LEVEL.
    root.setLevel(max(numeric, logging.INFO))
    ours = logging.getLogger("autodeployer")
    ours.handlers.clear()
    ours.propagate = True
    ours.setLevel(numeric)
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)


def _redact_rendered(redactor: Redactor, renderer: Any) -> Any:
    """The last step: a secret that reached the rendered line by any route is still replaced."""

    def render(logger: Any, name: str, event: dict[str, Any]) -> str:
        return redactor(renderer(logger, name, event))

    return render


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("autodeployer").bind(**bound)

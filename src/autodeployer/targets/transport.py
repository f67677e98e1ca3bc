"""HTTP calls to targets: bounded retries on transient errors only, errors that name the request."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ..errors import TargetError

TRANSIENT_STATUS = frozenset({502, 503, 504})


def describe(method: str, url: str) -> str:
    return f"{method} {url.split('?', 1)[0]}"


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    retries: int = 2,
    backoff: float = 0.25,
    max_backoff: float = 2.0,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request; retry connection errors, timeouts and 502/503/504 with capped backoff.

    Any other status is returned to the caller, which knows what it means for its API.
    """
    what = describe(method, url)
    delay = backoff
    for attempt in range(retries + 1):
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            error = TargetError(f"{what}: timed out")
        except httpx.TransportError as exc:
            error = TargetError(f"{what}: {_transport_problem(exc)}")
        else:
            if response.status_code not in TRANSIENT_STATUS:
                return response
            error = TargetError(f"{what}: {response.status_code} {response.reason_phrase}")
        if attempt < retries:
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)
    raise error


def _transport_problem(exc: httpx.TransportError) -> str:
    """httpx's transport errors often carry no text; say what kind of failure it was."""
    kinds = {
        httpx.ConnectError: "cannot connect",
        httpx.ReadError: "connection broken while reading the answer (reset or closed)",
        httpx.WriteError: "connection broken while sending the request",
        httpx.RemoteProtocolError: "the server closed the connection or broke the HTTP protocol",
    }
    summary = next((text for kind, text in kinds.items() if isinstance(exc, kind)), "transport error")
    detail = str(exc).strip()
    return f"{summary} ({type(exc).__name__}{': ' + detail if detail else ''})"


def error_detail(response: httpx.Response, limit: int = 300) -> str:
    """A short, single-line description of an error body."""
    try:
        body = response.json()
        text = str(body["message"]) if isinstance(body, dict) and "message" in body else response.text
    except ValueError:
        text = response.text
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")

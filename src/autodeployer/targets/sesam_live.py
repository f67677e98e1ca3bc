"""The Sesam node's whole configuration (``GET /config``), read as text and compared one entity at a time.

At 50,000 entities the answer is ~20 MB of JSON; decoded at once it is ~100 MB of dicts, next to as
much again for the desired state (issue 18: 672 MB peak RSS). A no-change cycle needs neither: each
live entity is decoded alone (``JSONDecoder.raw_decode`` over the array), its node keys are dropped, and
its digest (see :func:`entity_digest`) is compared with the digest of the entity of the same ``_id`` in
Git. Equal ones are dropped at once and only their ``_id`` is kept; the rest (changed, not in Git, the
metadata) are kept whole as *candidates*, which the plan compares exactly (dict equality, as before).

The digest only filters: equal digests mean equal entities, unequal digests are decided by ``==`` on
the full entities. So the semantics are those of the old whole-list diff: key order never counts and
``1 == 1.0 == True`` (such an entity stays a candidate every cycle, which costs time, not correctness).

The body is read streaming (``client.send(..., stream=True)`` then ``aread``-like chunk joining and
``aclose``): an ``httpx.Response`` sits in a reference cycle with its request, so a buffered response
kept its 20 MB body alive until the cyclic collector ran.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import marshal
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import TargetError
from .transport import TRANSIENT_STATUS, _transport_problem, describe, error_detail

_DECODER = json.JSONDecoder()
_BETWEEN = re.compile(r"[ \t\n\r]*")  # JSON whitespace


def entity_digest(entity: dict[str, Any]) -> bytes:
    """A 16-byte digest of an entity's value *and key order*: marshal format 2 has no object references,
    so equal values in the same order give equal bytes, and it is ~5x faster than ``json.dumps`` (C
    encoder: 0.2 s per 50,000 entities). Equal digests imply equal entities; a different key order only
    makes an entity a candidate, compared exactly."""
    return hashlib.blake2b(marshal.dumps(entity, 2), digest_size=16).digest()


@dataclass
class LiveScan:
    """What the plan needs of the live configuration after the streaming comparison."""

    ids: set[str] = field(default_factory=set)  # every live _id (metadata included)
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)  # stripped, maybe differing, by _id
    metadata: list[dict[str, Any]] = field(default_factory=list)  # the live metadata entities, stripped
    managed: int = 0  # live entities that are not metadata
    decoded: int = 0  # entities decoded (tests: the whole list is never built)

    def candidate_entities(self) -> list[dict[str, Any]]:
        """The kept live entities (metadata first), for consumers written for the old live list."""
        return [*self.metadata, *self.candidates.values()]


def scan_entities(entities: Iterable[dict[str, Any]], digests: Mapping[str, bytes],
                  strip: Callable[[dict[str, Any]], dict[str, Any]]) -> LiveScan:
    """Compare live entities one by one with the desired digests; keep only what may differ."""
    scan = LiveScan()
    for raw in entities:
        scan.decoded += 1
        entity = strip(raw)
        _id = str(entity.get("_id"))
        scan.ids.add(_id)
        if entity.get("type") == "metadata":
            scan.metadata.append(entity)
            continue
        scan.managed += 1
        want = digests.get(_id)
        if want is not None and want == entity_digest(entity):
            scan.candidates.pop(_id, None)  # a later entity of one _id wins, as in the old dict
            continue
        scan.candidates[_id] = entity
    return scan


class LiveConfig:
    """The node's ``GET /config`` answer as one string, decoded lazily entity by entity."""

    def __init__(self, text: str, url: str) -> None:
        self._text = text
        self.url = url

    @classmethod
    def of(cls, entities: list[dict[str, Any]], url: str = "(given)") -> LiveConfig:
        """From a list (tests, and callers that hold entities already)."""
        return cls(json.dumps(entities), url)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Each entity that is a JSON object, in order; TargetError naming the request when the answer is
        not a JSON array."""
        text, end = self._text, len(self._text)
        pos = _BETWEEN.match(text, 0).end()  # type: ignore[union-attr]
        if pos >= end or text[pos] != "[":
            raise self._error("expected a JSON array of entities")
        pos = _BETWEEN.match(text, pos + 1).end()  # type: ignore[union-attr]
        if pos < end and text[pos] == "]":
            return self._check_tail(pos + 1)
        decode, between = _DECODER.raw_decode, _BETWEEN.match
        while True:
            try:
                value, pos = decode(text, pos)
            except json.JSONDecodeError:
                raise self._error("the node answered with something that is not JSON") from None
            if isinstance(value, dict):
                yield value
            pos = between(text, pos).end()  # type: ignore[union-attr]
            sep = text[pos] if pos < end else ""
            if sep == "]":
                return self._check_tail(pos + 1)
            if sep != ",":
                raise self._error("the node answered with something that is not JSON")
            pos = between(text, pos + 1).end()  # type: ignore[union-attr]

    def _check_tail(self, pos: int) -> None:
        if _BETWEEN.match(self._text, pos).end() != len(self._text):  # type: ignore[union-attr]
            raise self._error("the node answered with something that is not JSON")

    def _error(self, why: str) -> TargetError:
        return TargetError(f"GET {self.url}: {why}")

    def entities(self) -> list[dict[str, Any]]:
        """The whole list (the old interface): only for small configurations and tests."""
        return list(self)

    def scan(self, digests: Mapping[str, bytes], strip: Callable[[dict[str, Any]], dict[str, Any]]) -> LiveScan:
        return scan_entities(self, digests, strip)


async def get_text(client: httpx.AsyncClient, url: str, headers: dict[str, str], timeout: float,
                   check_auth: Callable[[httpx.Response, str, str], None], retries: int = 2) -> str:
    """GET `url` streaming and return its body as text, the response closed: no buffered
    ``httpx.Response`` keeps the body alive. Retries like transport.request (connection errors,
    timeouts, 502/503/504); a non-200 answer or a body that is not UTF-8 is a TargetError naming the request."""
    what, delay = describe("GET", url), 0.25
    error: TargetError | None = None
    for attempt in range(retries + 1):
        try:
            return await _get_once(client, url, headers, timeout, check_auth)
        except _Transient as exc:
            error = TargetError(f"{what}: {exc}")
        if attempt < retries:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    assert error is not None
    raise error


class _Transient(Exception):
    """A failure worth another attempt."""


async def _get_once(client: httpx.AsyncClient, url: str, headers: dict[str, str], timeout: float,
                    check_auth: Callable[[httpx.Response, str, str], None]) -> str:
    try:
        response = await client.send(client.build_request("GET", url, headers=headers, timeout=timeout),
                                     stream=True)
    except httpx.TimeoutException:
        raise _Transient("timed out") from None
    except httpx.TransportError as exc:
        raise _Transient(_transport_problem(exc)) from None
    try:
        if response.status_code in TRANSIENT_STATUS:
            raise _Transient(f"{response.status_code} {response.reason_phrase}")
        check_auth(response, "GET", url)
        if response.status_code != 200:
            await response.aread()
            raise TargetError(f"GET {url}: {response.status_code} {error_detail(response)}")
        chunks = [chunk async for chunk in response.aiter_bytes()]
    except httpx.TimeoutException:
        raise _Transient("timed out") from None
    except httpx.TransportError as exc:
        raise _Transient(_transport_problem(exc)) from None
    finally:
        await response.aclose()
    body = b"".join(chunks)
    del chunks
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TargetError(f"GET {url}: the node answered with something that is not JSON") from None

"""Readable diffs of JSON entities and strict JSON parsing of config files."""

from __future__ import annotations

import difflib
import json
from typing import Any

BOM = b"\xef\xbb\xbf"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def unified(before: Any, after: Any, name: str, context: int = 2) -> str:
    """A unified diff of two JSON values, keys sorted so only real changes show."""
    old = [] if before is None else pretty(before).splitlines()
    new = [] if after is None else pretty(after).splitlines()
    lines = difflib.unified_diff(old, new, f"live/{name}", f"git/{name}", n=context, lineterm="")
    return "\n".join(lines)


class JSONProblem(ValueError):
    """Why bytes are not acceptable JSON; the message is ready to show next to a file name."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JSONProblem(f"duplicate key {key!r} in one object")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise JSONProblem(f"{name} is not valid JSON")


def loads_strict(data: bytes) -> Any:
    """Parse UTF-8 JSON (a BOM is accepted); duplicate keys, NaN and deep nesting are refused."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONProblem(f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JSONProblem("invalid JSON: nested too deeply") from None

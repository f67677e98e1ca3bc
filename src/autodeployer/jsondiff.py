"""Readable diffs of JSON entities and strict JSON parsing of config files."""

from __future__ import annotations

import difflib
import json
import re
import sys
from itertools import accumulate
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


MAX_DEPTH = 100  # arrays and objects inside one another; real configs stay far below
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'  # a JSON string token: the patterns below skip over strings
_STRINGS = re.compile(_STRING)
_BRACKET = re.compile(_STRING + r"|([\[{])|[\]}]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# surrogate escapes, and high-low pairs of them (one character outside the BMP, fine): when the text has no
# two backslashes before a u, every \\u in it starts an escape, so this finds lone ones exactly
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_CONSTANT = re.compile(_STRING + r"|(-?Infinity|NaN)")
_NUMBER = re.compile(_STRING + r"|(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_DEPTH_STEP = [1 if b == ord("[") else -1 if b == ord("]") else 0 for b in range(256)]  # by byte value


class _Unplaced(JSONProblem):
    """Raised from a parse hook, which does not know where it is; loads_strict adds the position."""

    def __init__(self, message: str, pattern: re.Pattern[str], token: str | None = None):
        super().__init__(message)
        self.pattern = pattern
        self.token = token


def _position(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)  # 1-based; rfind gives -1 on the first line
    return f"line {line} column {column}"


def _find(text: str, pattern: re.Pattern[str], token: str | None = None) -> str:
    """' at line L column C' of the first match of pattern's group 1 outside strings ('' if none)."""
    for match in pattern.finditer(text):
        if match.group(1) is not None and (token is None or match.group(1) == token):
            return f" at {_position(text, match.start(1))}"
    return ""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JSONProblem(f"duplicate key {key!r} in one object")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise _Unplaced(f"{name} is not valid JSON", _CONSTANT, name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf (NaN cannot be written as a number); cheaper than math.isfinite
        shown = text if len(text) <= 20 else text[:17] + "..."
        raise _Unplaced(f"number {shown} is out of range (not a finite double)", _NUMBER, text)
    return value


def _too_deep(data: bytes, text: str) -> str | None:
    """Where nesting first exceeds MAX_DEPTH, or None. Iterative, so it cannot overflow; on the UTF-8
    bytes, where an ASCII byte is always that character (multi-byte sequences never contain one)."""
    if b"\\" in data:  # escaped backslashes first, left to right as JSON reads them, then escaped quotes
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # only [ ] (for { } too) and the now unescaped quotes; an empty pair of quotes encloses no bracket
    structure = data.translate(_AS_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in structure:  # strings holding brackets: every other piece lies outside the strings
        structure = b"".join(structure.split(b'"')[::2])
    rest = structure
    for _ in range(MAX_DEPTH):  # replace() does not rescan what it joins: each pass takes exactly one level
        shorter = rest.replace(b"[]", b"")
        if not shorter:
            return None
        if len(shorter) == len(rest):
            break  # unbalanced: invalid JSON, count exactly
        rest = shorter
    if max(accumulate(map(_DEPTH_STEP.__getitem__, structure)), default=0) <= MAX_DEPTH:
        return None
    depth = 0
    for match in _BRACKET.finditer(text):  # only for a refusal: find where, in the original text
        if match.group(1) is not None:
            depth += 1
            if depth > MAX_DEPTH:
                return _position(text, match.start(1))
        elif match.group() in "]}":
            depth -= 1
    return None  # not reached for valid JSON; for invalid JSON the parser will say why


def _lone_surrogate(text: str) -> str | None:
    """'\\ud800 at line L column C' for a string or key holding an escaped lone surrogate (not UTF-8)."""
    for match in _STRINGS.finditer(text):
        token = match.group()
        lone = _SURROGATE.search(json.loads(token)) if "\\u" in token else None
        if lone:
            return f"\\u{ord(lone.group()):04x} at {_position(text, match.start())}"
    return None


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants,
                            parse_float=_finite_float)  # shared, as json.loads shares its own


def loads_strict(data: bytes) -> Any:
    """Parse UTF-8 JSON (a BOM is accepted) into what can be uploaded again as JSON.

    Refused with :class:`JSONProblem`: invalid UTF-8 or JSON, duplicate keys, NaN/Infinity and
    numbers out of double range (1e400), integers longer than Python converts (4,300 digits),
    escaped lone surrogates in strings or keys, and nesting deeper than ``MAX_DEPTH`` levels.
    """
    data = data.removeprefix(BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONProblem(f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    # before parsing, so the parser and the recursive walks after it stay shallow. A small file is skipped when
    # it has too few brackets to nest that deep; a large one costs _too_deep one pass instead of two counts
    if len(data) > 4096 or data.count(b"[") + data.count(b"{") > MAX_DEPTH:
        where = _too_deep(data, text)
        if where is not None:
            raise JSONProblem(f"nested too deeply: more than {MAX_DEPTH} levels at {where}")
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _Unplaced as exc:
        raise JSONProblem(f"{exc}{_find(text, exc.pattern, exc.token)}") from None
    except JSONProblem:
        raise
    except ValueError:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        limit = sys.get_int_max_str_digits()
        pattern = re.compile(_STRING + rf"|(?<![\d.])(-?\d{{{limit + 1},}})(?![.eE\d])")
        raise JSONProblem(f"integer of more than {limit} digits{_find(text, pattern)}") from None
    except RecursionError:  # only when the caller's own stack is nearly used up
        raise JSONProblem("invalid JSON: nested too deeply") from None
    # escaped surrogates (\ud800-\udfff): pairs are fine (ensure_ascii writes emoji so), lone ones are not
    where = None
    if b"\\" in data and (b"\\ud" in data or b"\\uD" in data) and (  # b"\\" in: a fast memchr
        b"\\\\u" in data or _SURROGATE_ESCAPE.search(_SURROGATE_PAIR.sub("", text))
    ):
        where = _lone_surrogate(text)  # exact: decodes each string holding an escape
    if where is not None:
        raise JSONProblem(f"lone surrogate escape {where}: a string cannot hold it in UTF-8")
    return value

"""jsondiff.loads_strict: what it refuses (with the place in the file) and what it must keep accepting."""

from __future__ import annotations

import json
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autodeployer.jsondiff import MAX_DEPTH, JSONProblem, loads_strict


def refused(text: str | bytes) -> str:
    with pytest.raises(JSONProblem) as problem:
        loads_strict(text.encode() if isinstance(text, str) else text)
    return str(problem.value)


@pytest.mark.parametrize("text, message", [
    ('{"x": 1e400}', "number 1e400 is out of range (not a finite double) at line 1 column 7"),
    ('{"y": "1e400",\n "x": [1.5, -1E+400]}',
     "number -1E+400 is out of range (not a finite double) at line 2 column 13"),
    ("[" + "9" * 400 + ".0]", "is out of range (not a finite double) at line 1 column 2"),
    ('{"x": ' + "7" * 5000 + "}", f"integer of more than {sys.get_int_max_str_digits()} digits at line 1 column 7"),
    ('[1.' + "1" * 5000 + ", -" + "7" * 5000 + "]", "digits at line 1 column 5006"),
    ('{"x": "\\ud800"}', "lone surrogate escape \\ud800 at line 1 column 7"),
    ('{"\\uDC00": 1}', "lone surrogate escape \\udc00 at line 1 column 2"),
    ('["\\ud83d\\ud83d\\ude00"]', "lone surrogate escape \\ud83d"),  # a high one, then a pair
    ('["\\\\\\ud83d\\\\udc00"]', "lone surrogate escape \\ud83d"),  # the "low" one is literal text
    ('{"x": [1, NaN]}', "NaN is not valid JSON at line 1 column 11"),
    ('{"x":\n\n  -Infinity}', "-Infinity is not valid JSON at line 3 column 3"),
    ('{"a": 1, "a": 2}', "duplicate key 'a' in one object"),
    ('{"a": ', "invalid JSON: Expecting value at line 1 column 7"),
    (b"[\xff]", "not valid UTF-8 (byte 0xff at offset 1)"),
], ids=["1e400", "-1E+400 on line 2", "400-digit float", "5,000-digit integer", "integer after a long float",
        "lone high surrogate", "lone low surrogate in a key", "high before a pair", "escaped backslash before u",
        "NaN", "-Infinity", "duplicate key", "truncated", "not UTF-8"])
def test_refusals_say_what_and_where(text: str | bytes, message: str):
    assert message in refused(text)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 100_000])
def test_nesting_is_limited_without_recursion(depth: int):
    assert refused("[" * depth + "]" * depth) == f"nested too deeply: more than {MAX_DEPTH} levels at line 1 column 101"
    assert "nested too deeply: " in refused('{"a": ' * depth + "1" + "}" * depth)
    assert "nested too deeply: " in refused("[" * depth)  # truncated as well: still refused, and fast


def test_nesting_check_is_independent_of_the_callers_stack():
    """The check runs before the parser, so it gives the same answer deep in a call stack or a thread."""
    found: list[str] = []

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        else:
            found.append(refused("[" * 500 + "]" * 500))

    limit = sys.getrecursionlimit()
    thread = threading.Thread(target=deep, args=(limit - 150,))
    thread.start()
    thread.join()
    assert found and found[0].startswith("nested too deeply: ")


def test_what_must_stay_accepted():
    assert loads_strict(("[" * MAX_DEPTH + "]" * MAX_DEPTH).encode()) is not None
    sibling_heavy = json.dumps([[[i]] for i in range(2000)]).encode()  # many brackets, shallow
    assert len(loads_strict(sibling_heavy)) == 2000
    brackets_in_strings = '["' + "[" * 300 + '", {"a": ' + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2) + "}]"
    assert loads_strict(brackets_in_strings.encode())[0] == "[" * 300
    assert loads_strict(b'{"x": "\\ud83d\\ude00 caf\\u00e9"}') == {"x": "\U0001F600 caf\u00e9"}  # ensure_ascii output
    assert loads_strict(b'{"x": "\\\\ud800"}') == {"x": "\\ud800"}  # an escaped backslash, then text
    assert loads_strict(b'[1e308, -1e-400, 1.5, 12345678901234567890]') == [1e308, -0.0, 1.5, 12345678901234567890]
    assert loads_strict(("[" + "7" * 4000 + "]").encode()) == [int("7" * 4000)]
    assert loads_strict(b"\xef\xbb\xbf{\"a\": 1}") == {"a": 1}


def test_whatever_is_accepted_can_be_uploaded():
    """The upload encodes with allow_nan=False as UTF-8: everything loads_strict returns must survive that."""
    pieces = ["\\ud83d", "\\ude00", "\\uD800", "\\uDC00", "\\\\", "\\\\u", "ud83d", "a", "\\u00e9", "\\n", "[", "{"]
    accepted = refused_ = 0
    for i in range(len(pieces) ** 3):
        a, b, c = pieces[i % 12], pieces[i // 12 % 12], pieces[i // 144 % 12]
        text = f'{{"{c + a}": ["{a + b + c}", 1e300, 2]}}'
        try:
            value = loads_strict(text.encode())
        except JSONProblem:
            refused_ += 1
            continue
        accepted += 1
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert accepted > 500 and refused_ > 500, (accepted, refused_)


def test_a_deep_secret_reference_is_a_refusal_not_a_recursion_error():
    """targets/sesam.py walks entities recursively for $SECRET(; MAX_DEPTH keeps that walk shallow."""
    from autodeployer.errors import Refused
    from autodeployer.model import SourceFile, Tree
    from autodeployer.targets.sesam import parse_desired

    for depth, expect in ((MAX_DEPTH - 1, "$SECRET(...) is only allowed in systems"), (500, "nested too deeply: ")):
        text = ('{"_id": "p", "type": "pipe", "x": ' + "[" * depth + '"$SECRET(x)"' + "]" * depth + "}").encode()
        tree = Tree("c0ffee" * 6 + "abcd", "tree", {"pipes/p.conf.json": SourceFile("pipes/p.conf.json", text,
                                                                                      "100644", len(text))})
        with pytest.raises(Refused) as exc:
            parse_desired(tree)
        assert "pipes/p.conf.json" in str(exc.value) and expect in str(exc.value), str(exc.value)


def depth_of(value: object) -> int:
    """Nesting depth, the slow obvious way (the values here are at most ~110 deep)."""
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\/ab\n\u00e9\U0001F600', max_size=8)
leaves = st.none() | st.integers(-5, 5) | tricky_text
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(tricky_text, inner, max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None, database=None)
@given(inner=values, wrappers=st.lists(st.tuples(st.booleans(), tricky_text, st.integers(0, 2)), min_size=90,
                                       max_size=110),
       ascii_only=st.booleans())
def test_depth_limit_matches_the_real_depth(inner: object, wrappers: list, ascii_only: bool):
    """Brackets, quotes and backslashes inside strings and keys must not fool the byte-level depth check."""
    value = inner
    for as_dict, key, position in wrappers:
        value = {key: value} if as_dict else ([key, value], [value, key], [value])[position]
    text = json.dumps(value, ensure_ascii=ascii_only)
    if depth_of(value) > MAX_DEPTH:
        assert refused(text).startswith("nested too deeply: ")
    else:
        assert loads_strict(text.encode()) == value

"""fastjson.decode gives exactly what json.loads gives, including where orjson alone would not."""

from __future__ import annotations

import json

import pytest

from autodeployer.fastjson import _CHUNK, decode, has_long_digits


@pytest.mark.parametrize("text", [
    '[{"_id": "a", "type": "pipe", "n": 1, "f": 1.5, "x": null, "t": true}]',
    '{"a": 1, "a": 2}',  # a duplicate key: the last wins in both
    "[NaN, Infinity, -Infinity]",  # orjson refuses: the standard decoder takes over
    "[123456789012345678901234567890, -98765432109876543210]",  # beyond 64 bits: orjson would give floats
    '["\\ud83d\\ude00", "\\u00e9"]',
    "[1E5, -0, 1e-400]",
])
def test_decode_equals_json_loads(text: str) -> None:
    value = decode(text.encode())
    assert value == json.loads(text)
    assert json.dumps(value) == json.dumps(json.loads(text))  # same types too (int stays int)


def test_decode_refuses_what_json_refuses() -> None:
    with pytest.raises(ValueError):
        decode(b'[{"a": 1}')


def test_long_digit_runs_are_found_across_chunk_borders() -> None:
    assert not has_long_digits(b"1" * 18)
    assert has_long_digits(b"1" * 19)
    border = b" " * (_CHUNK - 10) + b"9" * 19 + b" "
    assert has_long_digits(border)
    big = b"[" + b" " * (_CHUNK - 5) + b"12345678901234567890123]"
    assert decode(big) == [12345678901234567890123]

"""The worker's input decoding never raises, whatever the bytes."""

from __future__ import annotations

import json

import pytest

from serving.handlers.service import decode_value


def test_json_too_deep_for_the_parser_stays_bytes():
    deep = b"[" * 100_000 + b"]" * 100_000
    value = decode_value("application/json", deep)
    assert isinstance(value, bytearray) and value == deep


def test_json_text_and_bytes_by_content_type():
    assert decode_value("application/json", b'{"a": 1}') == {"a": 1}
    assert decode_value("application/json", b"{nope") == bytearray(b"{nope")
    assert decode_value("text/plain", "é".encode()) == "é"
    assert decode_value("text/plain", b"\xff") == bytearray(b"\xff")
    assert decode_value("application/json", b'{"a": 1}', decode=False) == bytearray(b'{"a": 1}')


@pytest.mark.parametrize("body", [
    b"5", b"[]", b'{"a": [1, 2.5, null]}', '{"é": "ü"}'.encode(),
    '\ufeff{"bom": 1}'.encode("utf-8"), '{"u16": 1}'.encode("utf-16"),
    '{"u16be": 1}'.encode("utf-16-be"), '{"u32": 1}'.encode("utf-32"),
    b'"\xed\xa0\x80"',  # a lone surrogate, which json.loads lets through
    b'{"bad": "\xff"}', b"", b" ",
])
def test_json_inputs_parse_as_json_loads_does(body):
    try:
        expected = json.loads(body)
    except Exception:
        expected = bytearray(body)
    assert decode_value("application/json", body) == expected

"""The worker's input decoding never raises, whatever the bytes."""

from __future__ import annotations

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

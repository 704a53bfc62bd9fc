"""The JSON depth scan: what counts as nesting, and the 400 past the limit."""

from __future__ import annotations

import json

import pytest

from serving.errors import BadRequest
from serving.jsondepth import check_json_depth, json_depth, loads


@pytest.mark.parametrize(("body", "depth"), [
    (b"", 0),
    (b"1", 0),
    (b"[]", 1),
    (b'[[1], {"a": [2]}]', 3),
    (b'{"a": {"b": {"c": []}}}', 4),
    (b'"[[[["', 0),                       # brackets in a string are text
    (b'["\\"[[", [1]]', 2),               # an escaped quote does not end the string
    (b'["a\\\\", [[1]]]', 3),             # an escaped backslash does: the string ends there
    (b'{"k[": "]]]]", "v": [[[]]]}', 4),  # in keys too
    (b"[" * 5000, 5000),                  # unclosed still counts
    (b'"' + b'\\"' * 10, 0),              # an unterminated string runs to the end
    (b"]]]]][[", 0),                      # closing before opening never goes below zero
])
def test_json_depth(body: bytes, depth: int):
    assert json_depth(body) == depth


def test_depth_matches_what_json_reaches_for_nested_lists():
    value: list[object] = [1.0, 2.0]
    for _ in range(20):
        value = [1, {"x": value, "y": "]]"}]
    body = json.dumps(value).encode()
    assert json_depth(body) == 41


def test_check_passes_at_the_limit_and_refuses_past_it():
    check_json_depth(b"[" * 10 + b"]" * 10, 10)
    check_json_depth(b"[" + b"[1]," * 1000 + b"[]]", 2)  # many brackets, shallow: scanned
    with pytest.raises(BadRequest) as caught:
        check_json_depth(b"[" * 11 + b"]" * 11, 10)
    assert caught.value.code == 400
    assert caught.value.message == ("JSON body nests 11 levels deep; at most 10 are accepted "
                                    "(max_json_depth)")


def test_loads_turns_every_failure_into_a_400():
    assert loads(b'{"a": [1]}', 10, "bad") == {"a": [1]}
    for body in (b"{nope", b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(BadRequest):
            loads(body, 100_000_000, "bad")

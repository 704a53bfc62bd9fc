"""The worker's output encoding is TorchServe's, byte for byte."""

from __future__ import annotations

import json

import pytest
import torch

from serving.handlers.service import encode_value, pretty_json


@pytest.mark.parametrize("value", [
    {"ok": True},
    {"a": 1, "b": 2.5, "c": None, "d": "x, y", "é": "ü\n"},
    [0.1, -2e-12, 3, True, None, 1e300],
    [torch.randn(1).item() for _ in range(384)],
    {"nested": {"a": [1, 2]}, "list": [{"x": 1}]},
    [], {}, [["a", "b"]], ["a, b", "c"], 5, "text", None,
    {"1": float("inf")},
    {"n": float("nan"), "m": float("-inf"), "f": -1e-5, "big": 10**30, "t": True,
     "no": False, "neg": -3, "ctl": "\x00\u2028\"\\", "astral": "\U0001f600"},
])
def test_pretty_json_is_json_dumps_indent_2(value):
    assert pretty_json(value) == json.dumps(value, indent=2)


def test_encodings_by_type():
    assert encode_value(b"\x00\x01") == (b"\x00\x01", "application/octet-stream")
    assert encode_value("hé") == ("hé".encode(), "text/plain; charset=utf-8")
    body, ctype = encode_value({"ok": True})
    assert (body, ctype) == (b'{\n  "ok": true\n}', "application/json")
    tensor_body, ctype = encode_value(torch.arange(3))
    assert ctype == "application/octet-stream" and tensor_body.startswith(b"PK")

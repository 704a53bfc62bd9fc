"""The OIP tensor codec: JSON and raw layouts, and the checks that make bad tensors 400s."""

from __future__ import annotations

import numpy as np
import pytest

from serving.errors import BadRequest
from serving.oip.tensors import (
    array_to_raw,
    check_raw,
    datatype_of,
    flatten,
    join_bytes,
    json_to_raw,
    raw_to_array,
    raw_to_json,
    split_bytes,
)


@pytest.mark.parametrize(("datatype", "data"), [
    ("FP32", [[1.5, -2.0], [3.25, 0.0]]),
    ("FP64", [[1e-300, 2.0], [3.0, 4.0]]),
    ("FP16", [[1.5, 2.0], [3.0, 4.0]]),
    ("INT8", [[-128, 127], [0, 1]]),
    ("UINT64", [[0, 2**64 - 1], [5, 6]]),
    ("INT64", [[-(2**63), 2**63 - 1], [0, 1]]),
    ("BOOL", [[True, False], [False, True]]),
    ("BYTES", [["a", "été"], ["", "x" * 300]]),
])
def test_json_and_raw_round_trip(datatype: str, data: list[list[object]]) -> None:
    flat = flatten(data, datatype, 4, "x")
    raw = json_to_raw(flat, datatype)
    array = raw_to_array(raw, datatype, [2, 2])
    assert array.shape == (2, 2)
    assert array_to_raw(array, datatype) == raw
    expected = [v.encode() for v in flat] if datatype == "BYTES" else flat
    assert array.reshape(-1).tolist() == expected
    assert raw_to_json(raw, datatype, "x") == flat


def test_bf16_keeps_the_upper_half_of_float32() -> None:
    raw = json_to_raw([1.0, -2.5], "BF16")
    assert len(raw) == 4
    assert raw_to_json(raw, "BF16", "x") == [1.0, -2.5]


def test_bytes_layout_is_a_little_endian_length_then_the_bytes() -> None:
    assert join_bytes([b"ab", "c"]) == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    assert split_bytes(b"\x02\x00\x00\x00ab\x00\x00\x00\x00", "x") == [b"ab", b""]


@pytest.mark.parametrize(("data", "datatype", "message"), [
    ([1, 2, 3], "FP32", "shape needs 4 elements, data has 3"),
    ([1, 2, 3, 4, 5], "FP32", "more than the 4 elements"),
    ([1, 2, 3, "4"], "FP32", "FP32 data must be numbers"),
    ([1, 2, 3, 256], "UINT8", "whole numbers from 0 to 255"),
    ([1, 2, 3, 4.5], "INT32", "whole numbers"),
    ([1, 0, 1, 0], "BOOL", "true/false"),
    (["a", "b", "c", 4], "BYTES", "strings"),
    ({"a": 1}, "FP32", "data must be a list"),
])
def test_bad_json_data_is_a_400_that_says_why(data: object, datatype: str,
                                               message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        flatten(data, datatype, 4, "input 'x'")


def test_raw_lengths_are_checked_against_the_shape() -> None:
    check_raw(b"\x00" * 16, "FP32", 4, "x")
    with pytest.raises(BadRequest, match="needs 16 bytes of FP32, binary data has 15"):
        check_raw(b"\x00" * 15, "FP32", 4, "x")
    check_raw(join_bytes(["a", "b"]), "BYTES", 2, "x")
    with pytest.raises(BadRequest, match="needs 3 BYTES elements, binary data has 2"):
        check_raw(join_bytes(["a", "b"]), "BYTES", 3, "x")
    with pytest.raises(BadRequest, match="runs past the end"):
        check_raw(b"\x09\x00\x00\x00ab", "BYTES", 1, "x")
    with pytest.raises(BadRequest, match="inside an element's 4-byte length"):
        check_raw(b"\x01\x00", "BYTES", 1, "x")


def test_non_utf8_bytes_cannot_be_json() -> None:
    with pytest.raises(BadRequest, match="binary_data"):
        raw_to_json(join_bytes([b"\xff\xfe"]), "BYTES", "output 'x'")


def test_datatype_of_numpy_arrays() -> None:
    assert datatype_of(np.zeros(2, dtype=np.float32)) == "FP32"
    assert datatype_of(np.zeros(2, dtype=np.int64)) == "INT64"
    assert datatype_of(np.zeros(2, dtype=bool)) == "BOOL"
    assert datatype_of(np.array(["a"])) == "BYTES"
    with pytest.raises(ValueError):
        datatype_of(np.zeros(2, dtype=np.complex64))

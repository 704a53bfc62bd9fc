"""OIP inference requests: structure, binary tensor data and declared metadata (400s), and
the bridge that turns them into handler rows and handler answers into output tensors."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from serving.errors import BadRequest
from serving.oip import handler_bridge
from serving.oip.metadata import UNDECLARED, ModelMetadata, from_model_yaml
from serving.oip.requests import HEADER_LENGTH, parse_request, worker_inputs
from serving.oip.tensors import join_bytes

DECLARED = from_model_yaml({"oip": {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}})


def _item(header: dict[str, Any], binary: bytes, metadata: ModelMetadata
          ) -> handler_bridge.OipItem:
    request = parse_request(header, binary, metadata)
    inputs = worker_inputs(json.dumps(header).encode(), request)
    return handler_bridge.decode([(i.name, i.content_type, i.value) for i in inputs])


def test_binary_inputs_take_their_bytes_in_order() -> None:
    a = np.arange(4, dtype="<f4")
    b = join_bytes(["hi", "there"])
    header = {"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 2],
         "parameters": {"binary_data_size": 16}},
        {"name": "j", "datatype": "INT32", "shape": [1], "data": [7]},
        {"name": "b", "datatype": "BYTES", "shape": [2],
         "parameters": {"binary_data_size": len(b)}}]}
    item = _item(header, a.tobytes() + b, UNDECLARED)
    assert item.array(0).tolist() == [[0, 1], [2, 3]]
    assert item.array(1).tolist() == [7]
    assert item.array(2).tolist() == [b"hi", b"there"]
    row = handler_bridge.handler_row(item, UNDECLARED)
    assert row["body"]["inputs"][2]["data"] == ["hi", "there"]
    assert row["body"]["inputs"][0]["data"] == [[0.0, 1.0], [2.0, 3.0]]
    assert row["body"]["inputs"][1]["data"] == [7]


@pytest.mark.parametrize(("header", "binary", "message"), [
    ({}, b"", "inputs: must be a non-empty list"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                  "parameters": {"binary_data_size": 8}}]}, b"\0" * 12,
     "12 bytes of binary data, its inputs' binary_data_size add up to 8"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                  "parameters": {"binary_data_size": 16}}]}, b"\0" * 8, "runs past"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2]}]}, b"",
     "neither data nor binary_data_size"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
                 {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}, b"",
     "given twice"),
    ({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}, b"",
     "input 'z': unknown; the model's inputs are x"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]}, b"",
     "datatype FP64 does not match the model's FP32"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}, b"",
     r"shape \[2\] does not match the model's \[-1, 2\]"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
      "outputs": [{"name": "q"}]}, b"", "output 'q': unknown"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
      "parameters": {"timeout": -1}}, b"", "parameters.timeout"),
])
def test_bad_requests_are_400s_that_say_why(header: dict[str, Any], binary: bytes,
                                            message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_request(header, binary, DECLARED)


def test_a_list_answer_becomes_the_declared_output() -> None:
    header = {"id": "abc",
              "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    item = _item(header, b"", DECLARED)
    body, ctype, headers = handler_bridge.encode_answer([0.5, 1.5, 2.5], item, DECLARED,
                                                        "m", "1.0", "rid")
    assert ctype == "application/json" and headers == {}
    assert json.loads(body) == {"model_name": "m", "model_version": "1.0", "id": "abc",
                                "outputs": [{"name": "y", "datatype": "FP32", "shape": [3],
                                             "data": [0.5, 1.5, 2.5]}]}


def test_binary_outputs_follow_the_header() -> None:
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
              "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    item = _item(header, b"", DECLARED)
    body, _, headers = handler_bridge.encode_answer(np.array([1, 2], dtype=np.float32), item,
                                                    DECLARED, "m", "1.0", "rid")
    n = int(headers[HEADER_LENGTH])
    head = json.loads(body[:n])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(body[n:], dtype="<f4").tolist() == [1.0, 2.0]


def test_an_answer_that_does_not_fit_the_declaration_is_an_error() -> None:
    declared = from_model_yaml({"oip": {"outputs": [
        {"name": "y", "datatype": "FP32", "shape": [4]}]}})
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
    item = _item(header, b"", declared)
    with pytest.raises(handler_bridge.AnswerError, match="do not fit the declared shape"):
        handler_bridge.encode_answer([1.0, 2.0], item, declared, "m", "1.0", "rid")


def test_v2_answers_pass_through_and_undeclared_answers_are_inferred() -> None:
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
    item = _item(header, b"", UNDECLARED)
    v2 = {"outputs": [{"name": "out", "datatype": "INT32", "shape": [2], "data": [1, 2]}]}
    body, _, _ = handler_bridge.encode_answer(v2, item, UNDECLARED, "m", "1", "r")
    assert json.loads(body)["outputs"] == v2["outputs"]
    body, _, _ = handler_bridge.encode_answer({"ok": True}, item, UNDECLARED, "m", "1", "r")
    assert json.loads(body)["outputs"] == [{"name": "output0", "datatype": "BYTES",
                                            "shape": [1], "data": ['{"ok": true}']}]
    body, _, _ = handler_bridge.encode_answer([[1, 2]], item, UNDECLARED, "m", "1", "r")
    assert json.loads(body)["outputs"] == [{"name": "output0", "datatype": "INT64",
                                            "shape": [1, 2], "data": [1, 2]}]


def test_body_mode_gives_the_handler_the_raw_tensor() -> None:
    metadata = from_model_yaml({"oip": {"handler_input": "body"}})
    raw = np.arange(3, dtype="<f4").tobytes()
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3],
                          "parameters": {"binary_data_size": 12}}]}
    row = handler_bridge.handler_row(_item(header, raw, metadata), metadata)
    assert row["body"] == bytearray(raw)
    assert row["oip"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [3],
                                     "parameters": {"binary_data_size": 12}}]
    text = {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["héllo"]}]}
    assert handler_bridge.handler_row(_item(text, b"", metadata), metadata)["body"] == \
        bytearray("héllo".encode())


def test_a_worker_answer_reads_back_into_tensors() -> None:
    from serving.oip.responses import read_answer
    from serving.types import InferenceResponse

    header = {"id": "q", "parameters": {"binary_data_output": True},
              "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    item = _item(header, b"", DECLARED)
    body, ctype, headers = handler_bridge.encode_answer([3.0, 4.0], item, DECLARED, "m", "2",
                                                        "rid")
    answer = read_answer(InferenceResponse(body, 200, ctype, headers))
    assert (answer.model_name, answer.model_version, answer.id) == ("m", "2", "q")
    (out,) = answer.outputs
    assert (out.name, out.datatype, out.shape, out.data) == ("y", "FP32", [2], None)
    assert out.raw is not None and np.frombuffer(out.raw, "<f4").tolist() == [3.0, 4.0]


def test_body_mode_takes_one_input_and_one_bytes_element() -> None:
    metadata = from_model_yaml({"oip": {"handler_input": "body"}})
    two = {"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1]},
                      {"name": "b", "datatype": "INT8", "shape": [1], "data": [1]}]}
    with pytest.raises(BadRequest, match="exactly one input, got 2"):
        parse_request(two, b"", metadata)
    texts = {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    with pytest.raises(BadRequest, match="one BYTES element, got 2"):
        parse_request(texts, b"", metadata)

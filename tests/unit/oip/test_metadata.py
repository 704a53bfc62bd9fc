"""The `oip:` block of model-config.yaml: validated at registration, reported as metadata."""

from __future__ import annotations

from typing import Any

import pytest

from serving.errors import ArchiveError
from serving.oip.metadata import UNDECLARED, from_model_yaml, model_metadata_dict

MINILM = {"oip": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}],
                  "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [384]}],
                  "handler_input": "body"}}


def test_a_declaration_is_read_and_reported() -> None:
    metadata = from_model_yaml(MINILM)
    assert metadata.handler_input == "body"
    assert model_metadata_dict("minilm", ["1.0"], metadata) == {
        "name": "minilm", "versions": ["1.0"], "platform": "pytorch_torchserve",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [384]}]}


def test_no_declaration_is_undeclared() -> None:
    assert from_model_yaml({"batchSize": 4}) is UNDECLARED
    assert not UNDECLARED.declared
    assert model_metadata_dict("m", ["1.0"], UNDECLARED)["inputs"] == []


def test_variable_dims_match_any_size() -> None:
    metadata = from_model_yaml({"oip": {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]}]}})
    tensor = metadata.inputs[0]
    assert tensor.matches([7, 3])
    assert not tensor.matches([7, 4])
    assert not tensor.matches([3])


@pytest.mark.parametrize(("block", "message"), [
    ([1, 2], "expected a mapping"),
    ({"inputs": [{"name": "x", "datatype": "FP31", "shape": [1]}]},
     r"oip.inputs.0.datatype: unknown datatype 'FP31'"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]},
     r"oip.inputs.0.shape: dims must be whole numbers >= 0, or -1"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": ["3"]}]},
     r"oip.inputs.0.shape.0: Input should be a valid integer"),
    ({"inputs": [{"name": "bad name", "datatype": "FP32", "shape": [1]}]},
     r"oip.inputs.0.name: must be 1-128 characters"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]},
                 {"name": "x", "datatype": "FP32", "shape": [1]}]},
     "duplicate name"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]},
                 {"name": "y", "datatype": "FP32", "shape": [1]}], "handler_input": "body"},
     "handler_input: body gives the handler one input"),
    ({"handler_input": "rows"}, "oip.handler_input"),
    ({"inputs": [], "outputz": []}, "oip.outputz: Extra inputs are not permitted"),
])
def test_mistakes_are_400s_naming_the_key(block: Any, message: str) -> None:
    with pytest.raises(ArchiveError, match=message) as raised:
        from_model_yaml({"oip": block})
    assert raised.value.code == 400

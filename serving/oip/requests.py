"""An OIP inference request: its JSON header checked (structure, datatypes, shapes, data
lengths, the model's declared metadata), and how it travels to a worker.

Front ends hand in the header as a parsed JSON object (REST: the body or its first
`Inference-Header-Content-Length` bytes; gRPC: built from the protobuf message) and the binary
tensor data that follows it. The worker receives the header bytes and one blob per binary
input, unchanged: the gateway checks tensors but never converts them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from serving.errors import BadRequest
from serving.oip.metadata import ModelMetadata
from serving.oip.tensors import check_datatype, check_raw, check_shape, element_count, flatten
from serving.types import Input

# Content types of the inputs that carry an OIP request to a worker (never seen on the wire).
OIP_REQUEST = "application/x-oip-request+json"
OIP_TENSOR = "application/x-oip-tensor"
HEADER_LENGTH = "inference-header-content-length"
Blob = bytes | bytearray | memoryview
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # dumps(separators=) builds one per call


@dataclass(slots=True)
class InputTensor:
    """One input tensor: JSON `data` (flat, checked) or `raw` binary bytes."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any]
    data: list[Any] | None = None
    raw: Blob | None = None


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A checked request: its header as sent, its tensors, and what it asks back."""

    header: dict[str, Any]
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    binary_output: bool = False  # `binary_data_output`: every output as binary data
    timeout_ms: int | None = None  # the `timeout` parameter (µs), rounded up to ms

    @property
    def id(self) -> str | None:
        value = self.header.get("id")
        return value if isinstance(value, str) and value else None


def parse_request(header: Any, binary: Blob, metadata: ModelMetadata) -> InferRequest:
    """Check a request against the protocol and the model's declared metadata (400s)."""
    if not isinstance(header, dict):
        raise BadRequest("inference request must be a JSON object with \"inputs\"")
    params = _parameters(header.get("parameters"), "parameters")
    if "id" in header and not isinstance(header["id"], str):
        raise BadRequest(f"id: must be a string, got {header['id']!r:.40}")
    inputs = _inputs(header.get("inputs"), binary)
    check_declared(inputs, metadata)
    if metadata.handler_input == "body":
        _check_body_input(inputs)
    outputs = _outputs(header.get("outputs"), metadata)
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise BadRequest("parameters.binary_data_output: must be true or false")
    return InferRequest(header, inputs, outputs, binary_output, _timeout_ms(params))


def checked_request(header: dict[str, Any], binary: Blob) -> InferRequest:
    """A request rebuilt from a header `parse_request` has passed (the worker's side: the
    front end checked it, and `worker_inputs` only takes a checked request)."""
    view = memoryview(binary).cast("B") if binary else None
    offset = 0
    inputs = []
    for item in header["inputs"]:
        params = item.get("parameters") or {}
        tensor = InputTensor(item["name"], item["datatype"], item["shape"], params)
        size = params.get("binary_data_size") if params else None
        if size is None:
            data = item["data"]
            for v in data:
                if type(v) is list:  # nested: flatten (the checks already passed)
                    data = flatten(data, tensor.datatype, element_count(tensor.shape),
                                   f"input {tensor.name!r}")
                    break
            tensor.data = data
        else:
            tensor.raw = view[offset:offset + size] if view is not None else b""
            offset += size
        inputs.append(tensor)
    request = InferRequest(header, inputs)
    params = header.get("parameters")
    if params:
        request.binary_output = bool(params.get("binary_data_output"))
    outputs = header.get("outputs")
    if outputs:
        request.outputs = [RequestedOutput(o["name"], bool((o.get("parameters") or {})
                                                           .get("binary_data")))
                           for o in outputs]
    return request


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: must be a JSON object, got {type(value).__name__}")
    return value


def _inputs(value: Any, binary: Blob) -> list[InputTensor]:
    if not isinstance(value, list) or not value:
        raise BadRequest("inputs: must be a non-empty list of tensors")
    view = memoryview(binary).cast("B")
    offset = 0
    tensors: list[InputTensor] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadRequest(f"inputs[{i}]: must be an object with name, shape, datatype, data")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"inputs[{i}]: name must be a non-empty string")
        where = f"input {name!r:.60}"
        if name in seen:
            raise BadRequest(f"{where}: given twice")
        seen.add(name)
        datatype = check_datatype(item.get("datatype"), where)
        shape = check_shape(item.get("shape"), where)
        params = _parameters(item.get("parameters"), f"{where}: parameters")
        size = params.get("binary_data_size")
        tensor = InputTensor(name, datatype, shape, params)
        count = element_count(shape)
        if size is not None:
            if type(size) is not int or size < 0:
                raise BadRequest(f"{where}: binary_data_size must be a whole number >= 0")
            if "data" in item:
                raise BadRequest(f"{where}: has both data and binary_data_size")
            if offset + size > len(view):
                raise BadRequest(f"{where}: binary_data_size {size} runs past the "
                                 f"{len(view)} bytes of binary data")
            tensor.raw = view[offset:offset + size]
            offset += size
            check_raw(tensor.raw, datatype, count, where)
        else:
            if "data" not in item:
                raise BadRequest(f"{where}: has neither data nor binary_data_size")
            if datatype == "BF16":
                raise BadRequest(f"{where}: BF16 tensors must be sent as binary data")
            tensor.data = flatten(item["data"], datatype, count, where)
        tensors.append(tensor)
    if offset != len(view):
        raise BadRequest(f"the request carries {len(view)} bytes of binary data, its inputs' "
                         f"binary_data_size add up to {offset}")
    return tensors


def check_declared(inputs: list[InputTensor], metadata: ModelMetadata) -> None:
    """Names, datatypes and shapes against what the model declares (if it declares)."""
    if not metadata.declared:
        return
    for tensor in inputs:
        declared = metadata.input(tensor.name)
        where = f"input {tensor.name!r:.60}"
        if declared is None:
            raise BadRequest(f"{where}: unknown; the model's inputs are "
                             f"{', '.join(t.name for t in metadata.inputs)}")
        if tensor.datatype != declared.datatype:
            raise BadRequest(f"{where}: datatype {tensor.datatype} does not match the "
                             f"model's {declared.datatype}")
        if not declared.matches(tensor.shape):
            raise BadRequest(f"{where}: shape {tensor.shape} does not match the model's "
                             f"{declared.shape}")
    given = {t.name for t in inputs}
    missing = [t.name for t in metadata.inputs if t.name not in given]
    if missing:
        raise BadRequest(f"missing input(s) {', '.join(missing)}")


def _check_body_input(inputs: list[InputTensor]) -> None:
    """`handler_input: body` hands one input to the handler as a /predictions body."""
    if len(inputs) != 1:
        raise BadRequest(f"this model takes exactly one input, got {len(inputs)}")
    tensor = inputs[0]
    if tensor.datatype == "BYTES" and element_count(tensor.shape) != 1:
        raise BadRequest(f"input {tensor.name!r:.60}: this model takes one BYTES element, "
                         f"got {element_count(tensor.shape)}")


def _outputs(value: Any, metadata: ModelMetadata) -> list[RequestedOutput]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("outputs: must be a list of {\"name\": ...}")
    outputs = []
    for i, item in enumerate(value):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"outputs[{i}]: name must be a non-empty string")
        params = _parameters(item.get("parameters"), f"output {name!r:.60}: parameters")
        binary = params.get("binary_data", False)
        if not isinstance(binary, bool):
            raise BadRequest(f"output {name!r:.60}: binary_data must be true or false")
        if params.get("classification"):
            raise BadRequest(f"output {name!r:.60}: the classification extension is not "
                             "supported")
        if metadata.outputs and metadata.output(name) is None:
            raise BadRequest(f"output {name!r:.60}: unknown; the model's outputs are "
                             f"{', '.join(t.name for t in metadata.outputs)}")
        outputs.append(RequestedOutput(name, binary))
    return outputs


def _timeout_ms(params: dict[str, Any]) -> int | None:
    timeout = params.get("timeout")
    if timeout is None:
        return None
    if type(timeout) is not int or timeout < 0:
        raise BadRequest("parameters.timeout: must be a whole number of microseconds")
    return max(1, math.ceil(timeout / 1000)) if timeout else None


def worker_inputs(header: bytes, request: InferRequest) -> list[Input]:
    """What a worker receives: the header as sent, then each binary input's bytes."""
    inputs = [Input("oip", OIP_REQUEST, header)]
    inputs.extend(Input(t.name, OIP_TENSOR, bytes(t.raw))
                  for t in request.inputs if t.raw is not None)
    return inputs


def header_bytes(header: dict[str, Any]) -> bytes:
    """A header built by a front end (gRPC) as the bytes a worker receives."""
    return _COMPACT.encode(header).encode()

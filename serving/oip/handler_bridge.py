"""How an unmodified TorchServe handler serves an OIP request (the rule documented in
docs/protocols/oip.md). Runs in the worker; the gateway never imports it.

Each OIP request is one item of the handler's batch, so OIP requests batch with each other
and with `/predictions` requests. The item (the handler's `data[i]`) is:

- `handler_input: request` (default): `{"body": {"id", "parameters", "inputs": [{"name",
  "datatype", "shape", "parameters", "data"}], "outputs"}}`, as TorchServe gives a handler a
  JSON body, with every tensor's `data` decoded to a nested list in its shape (BYTES
  elements as `str`, or `bytes` when not UTF-8), binary tensors included.
- `handler_input: body`: the request's one input as the body `/predictions` would give:
  `{"body": bytearray}` holding a numeric tensor's raw little-endian bytes, or a BYTES
  tensor's single element; plus `"oip"`: the request header without tensor data, for a
  handler that wants to know it is answering OIP.

The handler's answer for the item becomes output tensors:

- a dict with an `outputs` list in v2 form (`name`, `datatype`, `shape`, `data`) is taken as
  given, checked;
- otherwise, with one declared output, the whole answer is that output's data; with several,
  the answer is a dict {output name: data}; data may be a (nested) list, a number, a
  torch tensor or numpy array, `str`/`bytes` for BYTES;
- with no declared outputs, the answer is one output `output0` whose datatype follows the
  data (int -> INT64, float -> FP64, bool -> BOOL, a tensor's own dtype); an answer that is
  not an array of numbers or strings (a dict such as `{"ok": true}`) is one BYTES element
  holding its JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import BadRequest, ServingError
from serving.oip.metadata import ModelMetadata, TensorMetadata
from serving.oip.requests import HEADER_LENGTH, OIP_REQUEST, InferRequest, checked_request
from serving.oip.tensors import (
    NUMPY_DTYPES,
    array_to_raw,
    datatype_of,
    join_bytes,
    json_to_raw,
    raw_to_array,
    raw_to_json,
)

DEFAULT_OUTPUT = "output0"
# One encoder: json.dumps with separators= builds a new one per call (~5 µs).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class AnswerError(ServingError):
    """The handler's answer cannot be made into the model's output tensors."""

    code = 500
    type_name = "InternalServerException"


@dataclass(slots=True)
class OipItem:
    """One OIP request of a batch, decoded in the worker."""

    request: InferRequest

    def array(self, i: int) -> np.ndarray[Any, Any]:
        """Input `i` as an array of its shape (BYTES: object array of bytes)."""
        tensor = self.request.inputs[i]
        raw = tensor.raw if tensor.raw is not None else json_to_raw(tensor.data or [],
                                                                    tensor.datatype)
        return raw_to_array(raw, tensor.datatype, tensor.shape)


def is_oip(inputs: Sequence[tuple[str, str, Any]]) -> bool:
    return bool(inputs) and inputs[0][1] == OIP_REQUEST


def decode(inputs: Sequence[tuple[str, str, Any]]) -> OipItem:
    """The request a front end checked and sent (`requests.worker_inputs`): the header, then
    the binary tensors."""
    try:
        header = json.loads(bytes(inputs[0][2]))
    except (ValueError, RecursionError):
        raise BadRequest("the OIP request header is not valid JSON") from None
    binary = (b"" if len(inputs) == 1 else bytes(inputs[1][2]) if len(inputs) == 2
              else b"".join(bytes(value) for _, _, value in inputs[1:]))
    try:
        return OipItem(checked_request(header, binary))
    except (KeyError, TypeError, AttributeError) as e:  # not from parse_request: a bug
        raise BadRequest(f"malformed OIP request header: {type(e).__name__}: {e}") from None


def handler_row(item: OipItem, metadata: ModelMetadata) -> dict[str, Any]:
    """The handler's `data[i]` for an OIP request (see the module doc)."""
    request = item.request
    header = request.header
    if metadata.handler_input == "body":
        if len(request.inputs) != 1:
            raise BadRequest(f"this model takes exactly one input, got {len(request.inputs)}")
        return {"body": _body(item), "oip": _without_data(header)}
    inputs = []
    for i, tensor in enumerate(request.inputs):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape,
                 "data": _nested(item, i)}
        if tensor.parameters:
            entry["parameters"] = tensor.parameters
        inputs.append(entry)
    body = {key: value for key, value in header.items() if key != "inputs"}
    body["inputs"] = inputs
    return {"body": body}


def _body(item: OipItem) -> bytearray:
    """The one input as a `/predictions` body: raw bytes, or a BYTES tensor's one element."""
    tensor = item.request.inputs[0]
    if tensor.datatype != "BYTES":
        if tensor.raw is not None and tensor.datatype != "BF16":
            return bytearray(tensor.raw)
        return bytearray(array_to_raw(item.array(0), tensor.datatype))
    count = len(tensor.data) if tensor.data is not None else item.array(0).size
    if count != 1:
        raise BadRequest(f"input {tensor.name!r}: this model takes one BYTES element, "
                         f"got {count}")
    if tensor.data is not None:
        return bytearray(str(tensor.data[0]).encode("utf-8"))
    return bytearray(item.array(0).reshape(-1)[0])


def _nested(item: OipItem, i: int) -> Any:
    """Input `i`'s data as a nested list in its shape (BYTES as str, or bytes if not UTF-8)."""
    tensor = item.request.inputs[i]
    if tensor.data is not None and len(tensor.shape) == 1:
        if tensor.datatype in ("FP16", "FP32", "FP64"):
            return [float(v) for v in tensor.data]
        return tensor.data  # already flat, checked, of the right kind
    array = item.array(i)
    if tensor.datatype != "BYTES":
        return array.tolist()
    return np.vectorize(_text, otypes=[object])(array).tolist() if array.size else []


def _without_data(header: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in header.items() if key != "inputs"}
    out["inputs"] = [{k: v for k, v in t.items() if k != "data"} for t in header["inputs"]]
    return out


def _text(value: bytes) -> str | bytes:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


# -- answers ------------------------------------------------------------------------------
def encode_answer(answer: Any, item: OipItem, metadata: ModelMetadata, model_name: str,
                  model_version: str, request_id: str) -> tuple[bytes, str, dict[str, str]]:
    """The response for one request: (body, content type, headers). The body is the REST
    answer, binary tensor data extension included when an output is asked in binary."""
    try:
        outputs = _outputs(answer, metadata)
    except (TypeError, ValueError, OverflowError) as e:  # numpy refusing a conversion
        raise AnswerError(f"the handler's answer cannot be made into output tensors: "
                          f"{e}") from None
    request = item.request
    if request.outputs:
        outputs = _requested(outputs, request)
        asked_binary = {o.name for o in request.outputs if o.binary}
    else:
        asked_binary = set()
    header_outputs = []
    tail: list[bytes] = []
    for name, datatype, shape, array in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if request.binary_output or name in asked_binary:
            raw = join_bytes(array) if isinstance(array, list) else array_to_raw(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = _json_data(array, datatype, name)
        header_outputs.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version,
                                "id": request.id or request_id, "outputs": header_outputs}
    head = _COMPACT.encode(response).encode()
    if not tail:
        return head, "application/json", {}
    return (head + b"".join(tail), "application/octet-stream",
            {HEADER_LENGTH: str(len(head))})


# name, datatype, shape, values (an array; a flat list of str for a BYTES answer built here)
Output = tuple[str, str, list[int], np.ndarray[Any, Any] | list[str]]


def _json_data(array: np.ndarray[Any, Any] | list[str], datatype: str, name: str
               ) -> list[Any]:
    """An output's values as a flat JSON list (BYTES as UTF-8 text)."""
    if isinstance(array, list):
        return array
    if datatype == "BYTES":
        values = []
        for v in array.reshape(-1).tolist():
            if isinstance(v, bytes | bytearray):
                try:
                    v = bytes(v).decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRequest(f"output {name!r}: holds bytes that are not UTF-8 text, "
                                     "which JSON cannot carry; ask for it with binary_data"
                                     ) from None
            values.append(v if isinstance(v, str) else str(v))
        return values
    if datatype == "BF16":
        return raw_to_json(array_to_raw(array, datatype), datatype, name)
    flat: list[Any] = np.asarray(array, dtype=NUMPY_DTYPES[datatype]).reshape(-1).tolist()
    return flat


def _outputs(answer: Any, metadata: ModelMetadata) -> list[Output]:
    if isinstance(answer, dict) and isinstance(answer.get("outputs"), list):
        return [_v2_output(out, i) for i, out in enumerate(answer["outputs"])]
    declared = metadata.outputs
    if len(declared) == 1:
        return [_declared_output(answer, declared[0])]
    if declared:
        if not isinstance(answer, dict):
            raise AnswerError(f"the model declares {len(declared)} outputs; the handler must "
                              "answer a dict {output name: data}, got "
                              f"{type(answer).__name__}")
        unknown = sorted(set(answer) - {t.name for t in declared})
        if unknown:
            raise AnswerError(f"the handler answered undeclared output(s) {unknown}")
        return [_declared_output(answer[t.name], t) for t in declared if t.name in answer]
    return [_undeclared_output(answer)]


def _v2_output(out: Any, i: int) -> Output:
    if not isinstance(out, dict) or not isinstance(out.get("name"), str):
        raise AnswerError(f"handler answer outputs[{i}] is not a named tensor")
    name = out["name"]
    datatype = out.get("datatype")
    shape = out.get("shape")
    if datatype not in NUMPY_DTYPES and datatype != "BYTES":
        raise AnswerError(f"handler answer output {name!r}: unknown datatype {datatype!r}")
    if not isinstance(shape, list | tuple) or not all(
            isinstance(d, int) and d >= 0 for d in shape):
        raise AnswerError(f"handler answer output {name!r}: bad shape {shape!r:.60}")
    array = _array(out.get("data"), datatype)
    if array.size != int(np.prod(shape)):
        raise AnswerError(f"handler answer output {name!r}: shape {list(shape)} needs "
                          f"{int(np.prod(shape))} elements, data has {array.size}")
    return name, datatype, list(shape), array


def _declared_output(value: Any, declared: TensorMetadata) -> Output:
    try:
        array = _array(value, declared.datatype)
    except (TypeError, ValueError) as e:
        raise AnswerError(f"output {declared.name!r}: the handler's answer is not "
                          f"{declared.datatype} data ({e})") from None
    shape = _resolve_shape(declared, array)
    return declared.name, declared.datatype, shape, array


def _resolve_shape(declared: TensorMetadata, array: np.ndarray[Any, Any]) -> list[int]:
    if declared.matches(list(array.shape)):
        return list(array.shape)
    known = [d for d in declared.shape if d != -1]
    free = len(declared.shape) - len(known)
    fixed = int(np.prod(known)) if known else 1
    if free == 0 and fixed == array.size:
        return list(declared.shape)
    if free == 1 and fixed and array.size % fixed == 0:
        return [array.size // fixed if d == -1 else d for d in declared.shape]
    raise AnswerError(f"output {declared.name!r}: the handler answered {array.size} "
                      f"elements (shape {list(array.shape)}), which do not fit the declared "
                      f"shape {declared.shape}")


def _undeclared_output(value: Any) -> Output:
    if type(value) is dict:  # the common non-tensor answer ({"ok": true}): its JSON text
        return DEFAULT_OUTPUT, "BYTES", [1], [_json_text(value)]
    array: np.ndarray[Any, Any] | None = None
    if _is_tensor(value) or isinstance(value, np.ndarray):
        array = _array(value, None)
    elif isinstance(value, str | bytes | bytearray):
        array = _bytes_array([bytes(value) if not isinstance(value, str) else value])
    elif isinstance(value, list | int | float | bool):
        try:
            candidate = np.asarray(value)
        except ValueError:  # ragged
            candidate = None
        if candidate is not None and candidate.dtype.kind in "biufU":
            array = candidate
    try:
        datatype = datatype_of(array) if array is not None else "BYTES"
    except ValueError:  # a dtype OIP has no name for (complex, datetime)
        array = None
    if array is None:
        array = _bytes_array([_json_text(value)])
        datatype = "BYTES"
    return DEFAULT_OUTPUT, datatype, list(array.shape), array


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise AnswerError(f"the handler's answer cannot be an output tensor: {e}") from None


def _bytes_array(items: list[Any]) -> np.ndarray[Any, Any]:
    if len(items) == 1:
        array = np.empty(1, dtype=object)
        array[0] = items[0]
        return array
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy")


def _array(value: Any, datatype: str | None) -> np.ndarray[Any, Any]:
    if _is_tensor(value):
        tensor = value.detach().cpu()
        if str(tensor.dtype) in ("torch.bfloat16",):
            tensor = tensor.float()
        value = tensor.numpy()
    if datatype == "BYTES":
        if isinstance(value, str | bytes | bytearray):
            return _bytes_array([value if isinstance(value, str) else bytes(value)])
        array = np.asarray(value, dtype=object)
        return array
    if datatype is None:
        return np.asarray(value)
    dtype = "<f4" if datatype == "BF16" else NUMPY_DTYPES[datatype]
    return np.asarray(value, dtype=dtype)


def _requested(outputs: list[Output], request: InferRequest) -> list[Output]:
    if not request.outputs:
        return outputs
    by_name = {out[0]: out for out in outputs}
    missing = [o.name for o in request.outputs if o.name not in by_name]
    if missing:
        raise BadRequest(f"requested output(s) {', '.join(missing)} not produced; the model "
                         f"answered {', '.join(by_name) or 'nothing'}")
    return [by_name[o.name] for o in request.outputs]

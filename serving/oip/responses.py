"""An OIP answer as a worker sends it back: the REST body (JSON header, then the binary data
of the outputs asked in binary), read back into tensors by a front end that needs them (gRPC:
`raw_output_contents`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from serving.oip.requests import HEADER_LENGTH
from serving.types import InferenceResponse


@dataclass(slots=True)
class OutputTensor:
    """One output: its header entry (name, datatype, shape, parameters) and either its JSON
    `data` or its `raw` bytes."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any]
    data: list[Any] | None
    raw: bytes | None


@dataclass(slots=True)
class InferAnswer:
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any]
    outputs: list[OutputTensor]


def read_answer(answer: InferenceResponse) -> InferAnswer:
    """A successful (status < 400) OIP answer from a worker, split into its tensors.

    Ask the worker for every output in binary (`"binary_data_output": true` in the request's
    parameters) to get `raw` bytes for all of them."""
    declared = answer.headers.get(HEADER_LENGTH)
    body = answer.body
    n = int(declared) if declared is not None else len(body)
    header = json.loads(body[:n])
    offset = n
    outputs = []
    for out in header.get("outputs", []):
        params = dict(out.get("parameters") or {})
        size = params.pop("binary_data_size", None)
        raw = None
        if size is not None:
            raw = body[offset:offset + size]
            offset += size
        outputs.append(OutputTensor(out["name"], out["datatype"], list(out["shape"]), params,
                                    out.get("data"), raw))
    return InferAnswer(header.get("model_name", ""), header.get("model_version", ""),
                       header.get("id", ""), header.get("parameters") or {}, outputs)

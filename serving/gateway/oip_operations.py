"""The OIP REST routes (`/v2`) as OpenAPI 3 operations, for the inference API's document.

Their errors carry the protocol's body, `{"error": "..."}` (schema `OipError`), not TorchServe's.
"""

from __future__ import annotations

from typing import Any

from serving.gateway.openapi import ERRORS, Operation, Paths, path_param
from serving.oip.tensors import DATATYPES

OIP_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "string", "description": "Error message."}},
}
_NAME = path_param("model_name", "Name of the model.")
_VERSION = path_param("model_version", "Version of the model.")
_TEXT = {"type": "string"}
_PARAMETERS = {"type": "object", "description": "Parameters (binary_data_size, binary_data, "
               "binary_data_output, timeout in µs, ...)."}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": -1}}
_TENSOR_METADATA = {"type": "object", "required": ["name", "datatype", "shape"],
                    "properties": {"name": _TEXT, "datatype": _TEXT, "shape": _SHAPE}}
_INPUT = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": _TEXT,
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "datatype": {"type": "string", "enum": sorted(DATATYPES)},
    "parameters": _PARAMETERS,
    "data": {"type": "array", "description": "Row-major elements, flat or nested."}}}
_REQUEST = {"type": "object", "required": ["inputs"], "properties": {
    "id": _TEXT, "parameters": _PARAMETERS,
    "inputs": {"type": "array", "minItems": 1, "items": _INPUT},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                           "properties": {"name": _TEXT,
                                                          "parameters": _PARAMETERS}}}}}
_RESPONSE = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": _TEXT, "model_version": _TEXT, "id": _TEXT, "parameters": _PARAMETERS,
    "outputs": {"type": "array", "items": {
        "type": "object", "required": ["name", "datatype", "shape"],
        "properties": {"name": _TEXT, "datatype": _TEXT, "shape": _SHAPE,
                       "parameters": _PARAMETERS, "data": {"type": "array"}}}}}}
_FLAG = {"type": "object"}
_HEADER_LENGTH = {"in": "header", "name": "Inference-Header-Content-Length", "required": False,
                  "description": "Length of the JSON header when binary tensor data follows.",
                  "schema": {"type": "integer", "minimum": 0}}
_NOT_READY = "Not ready (not every model has its workers, or shutting down)"


def _error(code: int, description: str | None = None) -> dict[str, Any]:
    return {"description": description or ERRORS[code], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/OipError"}}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(operation_id: str, description: str, ok: dict[str, Any],
        errors: dict[int, str | None], versioned: bool | None = None,
        body: dict[str, Any] | None = None, extra: tuple[dict[str, Any], ...] = ()
        ) -> Operation:
    params = [] if versioned is None else [_NAME, _VERSION] if versioned else [_NAME]
    op: Operation = {"operationId": operation_id, "description": description,
                     "parameters": [*params, *extra],
                     "responses": {"200": ok, **{str(c): _error(c, d)
                                                 for c, d in errors.items()}}}
    if body is not None:
        op["requestBody"] = body
    return op


def _model_ops(versioned: bool) -> Paths:
    base = "/v2/models/{model_name}" + ("/versions/{model_version}" if versioned else "")
    suffix = "Version" if versioned else ""
    body = {"required": True, "content": {
        "application/json": {"schema": _REQUEST},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    infer_errors: dict[int, str | None] = {c: None for c in (400, 404, 413, 500, 502, 503,
                                                             504, 507)}
    infer = _op(f"oipInfer{suffix}", "OIP inference: JSON tensors, or a JSON header and "
                "binary tensor data (Inference-Header-Content-Length).",
                {"description": "Output tensors (JSON, or JSON header and binary data)",
                 "content": {"application/json": {"schema": _RESPONSE},
                             "application/octet-stream": {"schema": {
                                 "type": "string", "format": "binary"}}}},
                infer_errors, versioned, body, (_HEADER_LENGTH,))
    infer["responses"]["default"] = _error(500, "An error code the model's handler chose")
    return {
        base: {"get": _op(f"oipModelMetadata{suffix}", "OIP model metadata.",
                          _ok("Name, versions, platform, inputs, outputs", {
                              "type": "object",
                              "required": ["name", "versions", "platform", "inputs",
                                           "outputs"],
                              "properties": {"name": _TEXT, "platform": _TEXT,
                                             "versions": {"type": "array", "items": _TEXT},
                                             "inputs": {"type": "array",
                                                        "items": _TENSOR_METADATA},
                                             "outputs": {"type": "array",
                                                         "items": _TENSOR_METADATA}}}),
                          {404: None, 500: None}, versioned)},
        f"{base}/ready": {"get": _op(f"oipModelReady{suffix}", "OIP model readiness.",
                                     _ok("Ready", _FLAG),
                                     {400: "Not ready", 404: None, 500: None}, versioned)},
        f"{base}/infer": {"post": infer},
    }


OIP_OPERATIONS: Paths = {
    "/v2": {"get": _op("oipServerMetadata", "OIP server metadata.", _ok(
        "Name, version, extensions", {"type": "object",
                                      "required": ["name", "version", "extensions"]}),
        {500: None})},
    "/v2/health/live": {"get": _op("oipServerLive", "OIP server liveness.",
                                   _ok("Live", _FLAG), {500: None})},
    "/v2/health/ready": {"get": _op("oipServerReady", "OIP server readiness.",
                                    _ok("Ready", _FLAG), {400: _NOT_READY, 500: None})},
    **_model_ops(False),
    **_model_ops(True),
}

"""The operations of the inference and management APIs, as OpenAPI 3 operation objects.

Parameters and status codes are the ones the routes really read and answer (`Params` makes an
unknown query parameter a 400); each error status is answered with TorchServe's error body.
"""

from __future__ import annotations

from typing import Any

from serving.gateway.openapi import (
    ANY_BODY,
    STATUS_SCHEMA,
    Operation,
    Paths,
    error,
    ok,
    operation,
    path_param,
    query,
)

NAME = path_param("model_name", "Name of the model.")
VERSION = path_param("model_version", "Version of the model.")
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
TEXT = {"type": "string"}

# Handlers choose their own codes (`PredictionException(message, code)`): any status may come
# back from an inference call, always with the Error body.
HANDLER_ERROR = {"default": {**error(500), "description": "An error code the model's handler "
                             "chose (PredictionException), with the Error body"}}
INFERENCE_ERRORS = (400, 404, 413, 500, 502, 503, 504, 507)

# Bodies a handler can get; any other content type is accepted too and reaches it as bytes.
INFERENCE_BODY: dict[str, Any] = {
    "description": "Input data; its format is defined by the model's handler. JSON is "
                   "parsed, text/* arrives as str, form fields as one input each, anything "
                   "else as bytes.",
    "required": False,
    "content": {
        "application/json": {"schema": {}},
        "text/plain": {"schema": TEXT},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/x-www-form-urlencoded": {
            "schema": {"type": "object", "additionalProperties": TEXT}},
        "multipart/form-data": {"schema": {"type": "object", "additionalProperties": {
            "type": "string", "format": "binary"}}},
        **ANY_BODY,
    },
}


def _inference(operation_id: str, family: str, versioned: bool) -> Operation:
    what = "explanations" if family == "explanations" else "predictions"
    of = "the given version" if versioned else "the default version"
    op = operation(operation_id, f"Get {what} from {of} of a model. As in TorchServe, PUT "
                   "(`curl -T file`), GET, DELETE and PATCH reach the handler the same way, "
                   "and OPTIONS answers this part of the document.",
                   {"200": ok("Output of the model's handler")},
                   INFERENCE_ERRORS, [NAME, VERSION] if versioned else [NAME], INFERENCE_BODY)
    op["responses"].update(HANDLER_ERROR)
    return op


def _ping() -> Operation:
    return operation("ping", "Readiness: whether the server should get traffic.", {
        "200": ok('{"status": "Healthy"}: the start-up models are loaded and every model has '
                  "its minimum of workers READY", STATUS_SCHEMA),
        "503": ok('{"status": "Loading"} while the start-up models load; {"status": '
                  '"Unhealthy", "models": {"name/version": {"ready": n, "minimum": m}}} while '
                  'a model is short of READY workers; {"status": "Draining"} at shutdown',
                  STATUS_SCHEMA),
    }, ())


def _live() -> Operation:
    return operation("live", "Liveness: 200 while the process can answer, also while it "
                     "loads or drains. Needs no token.", {
                         "200": ok('{"status": "Alive"}', STATUS_SCHEMA)}, ())


def _kserve_v1() -> Operation:
    body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["instances"],
        "properties": {"instances": {"type": "array", "minItems": 1}}}}}}
    answer = {"type": "object", "required": ["predictions"],
              "properties": {"predictions": {"type": "array"}}}
    op = operation("kserveV1Predict", "KServe v1 predict: each instance is its own request "
                   "to the handler, so instances are batched.",
                   {"200": ok("One prediction per instance", answer)}, INFERENCE_ERRORS,
                   [NAME], body)
    op["responses"].update(HANDLER_ERROR)
    return op


INFERENCE: Paths = {
    "/ping": {"get": _ping()},
    "/live": {"get": _live()},
    "/predictions/{model_name}": {"post": _inference("predictions", "predictions", False)},
    "/predictions/{model_name}/{model_version}": {
        "post": _inference("versionPredictions", "predictions", True)},
    "/explanations/{model_name}": {"post": _inference("explanations", "explanations", False)},
    "/explanations/{model_name}/{model_version}": {
        "post": _inference("versionExplanations", "explanations", True)},
    "/v1/models/{model_name}:predict": {"post": _kserve_v1()},
}

_STATUS = {"200": ok("Done", STATUS_SCHEMA)}
_ACCEPTED = {"202": ok("Accepted: workers start in the background", STATUS_SCHEMA)}
_REGISTER = [
    query("url", "Archive file name in the model store.", TEXT, required=True),
    query("model_name", "Name of the model; overrides the manifest's.", TEXT),
    query("handler", "Handler; overrides the manifest's.", TEXT),
    query("runtime", "Runtime; overrides the manifest's. python or python3: any other is a "
          "400.", TEXT),
    query("batch_size", "Inference batch size.", {"type": "integer", "minimum": 1}),
    query("max_batch_delay", "Batch delay in ms.", {"type": "integer", "minimum": 0}),
    query("initial_workers", "Workers to start.", {"type": "integer", "minimum": 0}),
    query("synchronous", "Wait for the workers (default true).", BOOLEAN),
    query("response_timeout", "Seconds a batch may run.", {"type": "integer", "minimum": 1}),
    query("startup_timeout", "Seconds a worker may take to load.",
          {"type": "integer", "minimum": 1}),
    query("s3_sse_kms", "Accepted for TorchServe compatibility.", TEXT),
    query("optimization", "JSON object overriding model-config.yaml's optimization block.",
          TEXT),
]
_SCALE = [
    query("min_worker", "Minimum number of workers.", {"type": "integer", "minimum": 0}),
    query("max_worker", "Maximum number of workers.", {"type": "integer", "minimum": 0}),
    query("number_gpu", "Accepted for TorchServe compatibility.", INTEGER),
    query("synchronous", "Wait for the workers (default false).", BOOLEAN),
    query("timeout", "Accepted for TorchServe compatibility.", INTEGER),
]
_CUSTOMIZED = [query("customized", "Not served yet: true is a 400.", BOOLEAN)]
_DESCRIPTION = {"type": "array", "items": {"type": "object", "required": [
    "modelName", "modelVersion", "modelUrl", "minWorkers", "maxWorkers", "status", "workers"]}}
_LIST = {"type": "object", "required": ["models"], "properties": {
    "nextPageToken": TEXT,
    "models": {"type": "array", "items": {"type": "object",
                                          "required": ["modelName", "modelUrl"]}}}}


def _describe(operation_id: str, versioned: bool) -> Operation:
    which = ('the given version ("all": every version)' if versioned
             else "the default version")
    params = [NAME, VERSION] if versioned else [NAME]
    return operation(operation_id, f"Describe {which} of a model.",
                     {"200": ok("Model descriptions (always an array)", _DESCRIPTION)},
                     (400, 404, 500), [*params, *_CUSTOMIZED])


def _scale(operation_id: str, versioned: bool) -> Operation:
    return operation(operation_id, "Set the number of workers of a model version.",
                     {**_STATUS, **_ACCEPTED}, (400, 404, 500, 503, 507),
                     [NAME, VERSION, *_SCALE] if versioned else [NAME, *_SCALE])


def _unregister(operation_id: str, versioned: bool) -> Operation:
    return operation(operation_id, "Unregister a model version (the default one unless "
                     "given); its queued requests finish first.", _STATUS,
                     (400, 405, 404, 500), [NAME, VERSION] if versioned else [NAME])


_REGISTER_BODY = {"required": False, "description": "The same parameters as a JSON object "
                  "(they win over the query's).",
                  "content": {"application/json": {"schema": {"type": "object"}}}}

MANAGEMENT: Paths = {
    "/models": {
        "get": operation("listModels", "List registered models, by name.",
                         {"200": ok("A page of models", _LIST)}, (400, 500), [
                             query("limit", "Page size (at most 100).",
                                   {"type": "integer", "minimum": 1}),
                             query("next_page_token", "Where the page starts.",
                                   {"type": "integer", "minimum": 0})]),
        "post": operation("registerModel", "Register an archive from the model store.",
                          {**_STATUS, **_ACCEPTED}, (400, 405, 409, 500, 503, 507),
                          _REGISTER, _REGISTER_BODY),
    },
    "/models/{model_name}": {
        "get": _describe("describeModel", False),
        "put": _scale("setAutoScale", False),
        "delete": _unregister("unregisterModel", False),
    },
    "/models/{model_name}/{model_version}": {
        "get": _describe("describeModelVersion", True),
        "put": _scale("setAutoScaleVersion", True),
        "delete": _unregister("unregisterModelVersion", True),
    },
    "/models/{model_name}/{model_version}/set-default": {
        "put": operation("setDefault", "Make a version the model's default.", _STATUS,
                         (404, 500), [NAME, VERSION]),
    },
}

"""The OpenAPI 3 description of both REST APIs, served where TorchServe serves it (`OPTIONS /`)
and at `GET /openapi.json`.

Each document is FastAPI's generated one with every operation replaced by a hand-written one
from the tables below: the routes take `Request` and read their parameters through `Params`,
so FastAPI cannot see the parameters, the status codes or the error body, and the raw ASGI
`/predictions` and `/explanations` routes are not FastAPI routes at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

# TorchServe's own description (`OPTIONS /` on 8080 and 8081) is OpenAPI 3.0.1 with this info.
OPENAPI_VERSION = "3.0.1"
TITLE = "TorchServe APIs"
DESCRIPTION = ("TorchServe is a flexible and easy to use tool for serving deep learning models "
               "(served by `serving`, a TorchServe-compatible model server)")
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

Operation = dict[str, Any]
Paths = dict[str, dict[str, Operation]]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "type", "message"],
    "properties": {
        "code": {"type": "integer", "description": "Error code (the HTTP status)."},
        "type": {"type": "string", "description": "Error type, e.g. ModelNotFoundException."},
        "message": {"type": "string", "description": "Error message."},
    },
}
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["status"],
    "properties": {"status": {"type": "string"}},
}
DOCUMENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["openapi", "info", "paths"],
    "properties": {"openapi": {"type": "string"}, "info": {"type": "object"},
                   "paths": {"type": "object"}},
}
ANY_BODY: dict[str, Any] = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
# A handler's answer: any content type, and when it is JSON, any JSON.
ANY_ANSWER: dict[str, Any] = {"*/*": {"schema": {}}}

# What every error status means; an operation lists the ones it can answer.
ERRORS = {
    400: "Bad request: a malformed body or parameter (the message names it)",
    405: "Model API disabled (start with --enable-model-api); TorchServe 0.12's answer",
    404: "Model or model version not found",
    409: "Model version already registered",
    413: "Request body larger than max_request_size",
    500: "Internal server error, or a handler or model failure",
    502: "The worker holding the request died",
    503: "No worker available, the job queue is full (Retry-After: 1), or the server is "
         "shutting down",
    504: "The batch ran longer than the model's responseTimeout",
    507: "The worker ran out of memory",
}


def error(code: int) -> dict[str, Any]:
    return {"description": ERRORS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": description, "content": ANY_ANSWER}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def path_param(name: str, description: str) -> dict[str, Any]:
    return {"in": "path", "name": name, "required": True, "description": description,
            "schema": {"type": "string"}}


def query(name: str, description: str, schema: dict[str, Any],
          required: bool = False) -> dict[str, Any]:
    return {"in": "query", "name": name, "required": required, "description": description,
            "schema": schema}


def operation(operation_id: str, description: str, responses: dict[str, Any],
              codes: tuple[int, ...], parameters: Sequence[dict[str, Any]] = (),
              request_body: dict[str, Any] | None = None) -> Operation:
    """One operation; `codes` are its error statuses, each answered with the Error body."""
    op: Operation = {"operationId": operation_id, "description": description,
                     "parameters": list(parameters),
                     "responses": {**responses, **{str(c): error(c) for c in codes}}}
    if request_body is not None:
        op["requestBody"] = request_body
    return op


def description_paths() -> Paths:
    """`OPTIONS /` and `GET /openapi.json`, on both APIs."""
    answer = {"200": ok("An OpenAPI 3.0.1 description of this API", DOCUMENT_SCHEMA)}
    return {
        "/": {"options": operation("apiDescription", "Get the OpenAPI description.",
                                   answer, (500,))},
        "/openapi.json": {"get": operation("openapiJson", "Get the OpenAPI description.",
                                           answer, (500,))},
    }


def document(app: FastAPI, operations: Paths,
             schemas: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """FastAPI's document for `app`, with `operations` replacing or adding operations.

    A FastAPI route without a hand-written operation keeps FastAPI's, with its 422 (which the
    error handlers answer as 400) rewritten to the Error body.
    """
    doc = get_openapi(title=TITLE, version=app.version, openapi_version=OPENAPI_VERSION,
                      description=DESCRIPTION, routes=app.routes)
    paths: Paths = doc.setdefault("paths", {})
    for ops in paths.values():
        for op in ops.values():
            responses = op.get("responses", {})
            if responses.pop("422", None) is not None:
                responses["400"] = error(400)
    for path, ops in operations.items():
        paths.setdefault(path, {}).update(ops)
    extra_schemas = schemas
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    # FastAPI's validation-error schemas describe 422s that this server never sends.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    schemas.update(extra_schemas or {})
    return doc


def model_description(doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The part of an API's document about one model: the operations under `prefix` (what
    TorchServe answers to `OPTIONS /predictions/{model}` with "/predictions/", and to
    `OPTIONS /models/{model}` on the management API with "/models/")."""
    return {**doc, "paths": {path: ops for path, ops in doc["paths"].items()
                             if path.startswith(prefix)}}


def install_openapi(app: FastAPI, operations: Paths,
                    schemas: dict[str, dict[str, Any]] | None = None) -> None:
    """Serve the document at `OPTIONS /`, `GET /openapi.json` and the app's `openapi_url`;
    `schemas` are component schemas the operations refer to besides `Error`."""
    operations = {**description_paths(), **operations}
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not built:
            built.update(document(app, operations, schemas))
        return built

    app.openapi = openapi  # type: ignore[method-assign]

    @app.options("/", include_in_schema=False)
    async def api_description() -> JSONResponse:
        return JSONResponse(openapi())

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> JSONResponse:
        return JSONResponse(openapi())

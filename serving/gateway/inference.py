"""The inference API (default 127.0.0.1:8080): ping, predictions, explanations, KServe v1."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from serving.errors import BadRequest, MethodNotAllowed, NotFound, ServingError
from serving.gateway.bodies import read_body
from serving.gateway.errors import install_error_handlers
from serving.gateway.guard import LIVENESS_PATH
from serving.gateway.observed import counted
from serving.gateway.oip import PREFIX as OIP_PREFIX
from serving.gateway.oip import OipEndpoint
from serving.gateway.oip_operations import OIP_ERROR_SCHEMA, OIP_OPERATIONS
from serving.gateway.openapi import install_openapi, model_description
from serving.gateway.operations import INFERENCE
from serving.gateway.predictions import (
    PredictionEndpoint,
    Receive,
    Scope,
    Send,
    handler_headers,
    request_timeout_ms,
    split_target,
)
from serving.gateway.requestids import request_id_of, scope_request_id
from serving.gateway.responses import send_error
from serving.jsondepth import loads
from serving.routing.dataplane import DataPlane
from serving.types import InferenceRequest, InferenceResponse, Input

HOT_PREFIXES = ("/predictions/", "/explanations/")
# TorchServe 0.12 sends every method but OPTIONS on these paths to the handler (its docs use
# `curl -T file`, a PUT); HEAD, TRACE and CONNECT have no body to answer or send, so: 405.
PREDICTION_METHODS = frozenset({"DELETE", "GET", "PATCH", "POST", "PUT"})
ALLOW = sorted(PREDICTION_METHODS | {"OPTIONS"})


class InferenceApp:
    """Routes `/predictions`, `/explanations` and OIP's `/v2` straight to their endpoint;
    everything else goes to the FastAPI app."""

    def __init__(self, plane: DataPlane, max_kserve_instances: int) -> None:
        self.predictions = PredictionEndpoint(plane, explain=False)
        self.explanations = PredictionEndpoint(plane, explain=True)
        self.oip = OipEndpoint(plane)
        self.plane = plane
        self.api = create_inference_api(plane, max_kserve_instances)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(HOT_PREFIXES):
            family, model, version, url_path = split_target(path)
            if scope["method"] not in PREDICTION_METHODS or not model:
                await self._refuse(scope, send, family, model)
                return
            scope["path_params"] = {"model_name": model, "model_version": version,
                                    "url_path": url_path}
            endpoint = self.predictions if family == "predictions" else self.explanations
            await endpoint(scope, receive, send)
            return
        if scope["type"] == "http" and (path == OIP_PREFIX or path.startswith("/v2/")):
            await self.oip(scope, receive, send)
            return
        await self.api(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, family: str, model: str) -> None:
        """Off the hot path: no model name (404, as TorchServe), `OPTIONS` (the model's
        description, as TorchServe), or a method TorchServe would not serve either (405)."""
        path: str = scope["path"]
        request_id = request_id_of(handler_headers(scope))
        send = counted(scope, send)  # a route whose answers Observed leaves to this app
        if not model:
            await send_error(send, NotFound(f"Requested resource is not found: {path}; use "
                                            f"/{family}/{{model_name}}[/{{version}}]"),
                             request_id)
            return
        if scope["method"] == "OPTIONS":
            await self._describe(scope, send, family, model, request_id)
            return
        await send_error(send, MethodNotAllowed(
            f"{scope['method']} is not allowed on {path}; allowed: {', '.join(ALLOW)}",
            allow=ALLOW), request_id)

    async def _describe(self, scope: Scope, send: Send, family: str, model: str,
                        request_id: str) -> None:
        """TorchServe answers `OPTIONS /predictions/{model}` with the OpenAPI operations of
        that model: here the inference API's, checked against the registry first."""
        parts = scope["path"][1:].split("/")
        try:
            self.plane.model_info(model, parts[2] if len(parts) > 2 and parts[2] else None)
        except ServingError as e:
            await send_error(send, e, request_id)
            return
        body = json.dumps(model_description(self.api.openapi(), f"/{family}/")).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode("latin-1"))]})
        await send({"type": "http.response.body", "body": body})


def create_inference_api(plane: DataPlane, max_kserve_instances: int) -> FastAPI:
    app = FastAPI(title="Inference API", version="0.12", openapi_url="/api-description",
                  docs_url=None, redoc_url=None)
    install_error_handlers(app)
    install_openapi(app, {**INFERENCE, **OIP_OPERATIONS}, {"OipError": OIP_ERROR_SCHEMA})
    limit = plane.max_request_size

    # TorchServe answers /ping and KServe v1 predict whatever the method; the documented
    # operations stay GET and POST (serving/gateway/operations.py).
    @app.api_route("/ping", methods=sorted(PREDICTION_METHODS),
                   include_in_schema=False)
    async def ping() -> JSONResponse:
        """Readiness (see ModelManager.readiness): a load balancer sends no traffic on 503."""
        status, body = plane.readiness()
        return JSONResponse(body, status_code=status)

    @app.get(LIVENESS_PATH)
    async def live() -> JSONResponse:
        """Liveness: the event loop answers, so the process can serve (also while it loads
        or drains: restarting it then would only lose work)."""
        return JSONResponse({"status": "Alive"})

    @app.options("/v1/models/{model_name}:predict", include_in_schema=False)
    async def kserve_v1_describe(model_name: str) -> JSONResponse:
        """TorchServe answers OPTIONS on KServe v1's path as on `/predictions/{model}`: the
        model's predictions operations, or 404 for a model it does not know."""
        plane.model_info(model_name, None)
        return JSONResponse(model_description(app.openapi(), "/predictions/"))

    @app.api_route("/v1/models/{model_name}:predict", methods=sorted(PREDICTION_METHODS),
                   include_in_schema=False)
    async def kserve_v1_predict(model_name: str, request: Request) -> Response:
        """KServe v1: each instance is its own request to the handler, so they batch."""
        body = await read_body(request.receive, request.headers.get("content-length"), limit)
        instances = _instances(body, plane.max_json_depth)
        # Each instance takes a place in the model's queue: a request that cannot fit is
        # refused whole rather than answered 503 for the instances beyond the queue.
        queue = plane.model_info(model_name, None).settings.job_queue_size
        most = min(max_kserve_instances, queue)
        if len(instances) > most:
            why = ("max_kserve_instances" if most == max_kserve_instances
                   else f"the job queue of model {model_name}")
            raise BadRequest(f"KServe v1 request has {len(instances)} instances; at most "
                             f"{most} are accepted per request ({why})")
        request_id = scope_request_id(request.scope)
        visible = handler_headers(request.scope)
        timeout_ms = request_timeout_ms(visible)
        # The body is read: receive() returns when the client goes, which withdraws every
        # instance (each watches through a shield, so that one finishing stops no other).
        gone = asyncio.ensure_future(request.receive())
        try:
            answers = await asyncio.gather(*(
                plane.infer(model_name, None,
                            InferenceRequest(f"{request_id}:{i}",
                                             [Input("data", "application/json",
                                                    json.dumps(inst).encode())], visible),
                            timeout_ms=timeout_ms, disconnected=asyncio.shield(gone))
                for i, inst in enumerate(instances)), return_exceptions=True)
        finally:
            gone.cancel()
        predictions = []
        for answer in answers:
            if isinstance(answer, ServingError):
                raise answer
            if isinstance(answer, BaseException):
                raise answer
            predictions.append(_prediction(answer))
        return JSONResponse({"predictions": predictions}, headers={"x-request-id": request_id})

    return app


def _instances(body: bytes, max_json_depth: int) -> list[Any]:
    payload = loads(body, max_json_depth,
                    "KServe v1 request body must be JSON: {\"instances\": [...]}")
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        raise BadRequest("KServe v1 request needs a non-empty \"instances\" list")
    return instances


def _prediction(answer: InferenceResponse) -> Any:
    if answer.status >= 400:
        raise ServingError(answer.body.decode("utf-8", "replace"), answer.status)
    try:
        return json.loads(answer.body)
    except ValueError:
        try:
            return answer.body.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(answer.body).decode()}


"""The management API (TorchServe's paths and JSON shapes, default 127.0.0.1:8081)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.errors import BadRequest, MethodNotAllowed
from serving.gateway.bodies import read_body
from serving.gateway.errors import install_error_handlers
from serving.gateway.openapi import install_openapi, model_description
from serving.gateway.operations import MANAGEMENT
from serving.gateway.params import Params
from serving.jsondepth import loads
from serving.routing.describe import describe, list_models
from serving.routing.manager import ModelManager, Registration

REGISTER_PARAMS = frozenset({
    "url", "model_name", "handler", "runtime", "batch_size", "max_batch_delay",
    "initial_workers", "synchronous", "response_timeout", "startup_timeout", "s3_sse_kms",
    "optimization"})
SCALE_PARAMS = frozenset({"min_worker", "max_worker", "number_gpu", "synchronous", "timeout"})
# Registering and unregistering need enable_model_api=true (--enable-model-api).
MODEL_API_DISABLED = "Requested method is not allowed, please refer to API document."


def status(message: str, code: int = 200) -> JSONResponse:
    return JSONResponse({"status": message}, status_code=code)


def create_management_app(manager: ModelManager) -> FastAPI:
    app = FastAPI(title="Management API", version="0.12", openapi_url="/api-description",
                  docs_url=None, redoc_url=None)
    install_error_handlers(app)
    install_openapi(app, MANAGEMENT)
    model_api = manager.settings.enable_model_api

    def require_model_api() -> None:
        # TorchServe 0.12's answer, word for word: clients written for it match on the 405.
        if not model_api:
            raise MethodNotAllowed(MODEL_API_DISABLED)

    @app.post("/models")
    async def register(request: Request) -> JSONResponse:
        require_model_api()
        values: dict[str, Any] = dict(request.query_params)
        settings = manager.settings
        body = await read_body(request.receive, request.headers.get("content-length"),
                               settings.max_management_request_size,
                               "max_management_request_size")
        if body.strip():
            extra = loads(body, settings.max_json_depth, "request body must be JSON when present")
            if not isinstance(extra, dict):
                raise BadRequest("request body must be a JSON object")
            values.update(extra)
        p = Params(values, REGISTER_PARAMS)
        url = p.text("url")
        if url is None:
            raise BadRequest("url: parameter is required (the archive's file name in the "
                             "model store)")
        reg = Registration(
            url=url, model_name=p.text("model_name"), handler=p.text("handler"),
            runtime=p.text("runtime"), batch_size=p.integer("batch_size", minimum=1),
            max_batch_delay=p.integer("max_batch_delay", minimum=0),
            initial_workers=p.integer("initial_workers", minimum=0),
            synchronous=p.flag("synchronous", True),
            response_timeout=p.integer("response_timeout", minimum=1),
            startup_timeout=p.integer("startup_timeout", minimum=1),
            optimization=p.mapping("optimization"))
        _, message, code = await manager.register(reg)
        return status(message, code)

    @app.get("/models")
    async def list_all(request: Request) -> JSONResponse:
        p = Params(dict(request.query_params), frozenset({"limit", "next_page_token"}))
        limit = p.integer("limit", minimum=1) or 100
        token = p.integer("next_page_token", minimum=0) or 0
        return JSONResponse(list_models(manager.registry, min(limit, 100), token))

    def describe_params(request: Request) -> None:
        p = Params(dict(request.query_params), frozenset({"customized"}))
        if p.flag("customized", False):
            raise BadRequest("customized: the handler's describe_handle metadata is not "
                             "served yet; describe without customized=true")

    @app.get("/models/{model_name}")
    async def describe_default(model_name: str, request: Request) -> JSONResponse:
        describe_params(request)
        return JSONResponse(describe(manager.registry, model_name, None))

    @app.get("/models/{model_name}/{model_version}")
    async def describe_version(model_name: str, model_version: str,
                               request: Request) -> JSONResponse:
        describe_params(request)
        return JSONResponse(describe(manager.registry, model_name, model_version))

    # TorchServe answers OPTIONS on a model's paths with that model's management operations
    # (404 for a model or version it does not know); on /models it is a 405.
    def model_operations(model_name: str, model_version: str | None) -> JSONResponse:
        manager.registry.get(model_name, model_version)
        return JSONResponse(model_description(app.openapi(), "/models/"))

    @app.options("/models/{model_name}", include_in_schema=False)
    async def options_default(model_name: str) -> JSONResponse:
        return model_operations(model_name, None)

    @app.options("/models/{model_name}/{model_version}", include_in_schema=False)
    async def options_version(model_name: str, model_version: str) -> JSONResponse:
        return model_operations(model_name, model_version)

    @app.options("/models/{model_name}/{model_version}/set-default", include_in_schema=False)
    async def options_set_default(model_name: str, model_version: str) -> JSONResponse:
        return model_operations(model_name, model_version)

    async def scale(model_name: str, model_version: str | None, request: Request
                    ) -> JSONResponse:
        p = Params(dict(request.query_params), SCALE_PARAMS)
        min_worker = p.integer("min_worker", minimum=0)
        max_worker = p.integer("max_worker", minimum=0)
        if min_worker is None:
            current = manager.registry.get(model_name, model_version).settings.min_workers
            min_worker = current if max_worker is None else min(current, max_worker)
        message, code = await manager.scale(model_name, model_version, min_worker, max_worker,
                                            p.flag("synchronous", False))
        return status(message, code)

    @app.put("/models/{model_name}")
    async def scale_default(model_name: str, request: Request) -> JSONResponse:
        return await scale(model_name, None, request)

    @app.put("/models/{model_name}/{model_version}")
    async def scale_version(model_name: str, model_version: str, request: Request
                            ) -> JSONResponse:
        return await scale(model_name, model_version, request)

    @app.put("/models/{model_name}/{model_version}/set-default")
    async def set_default(model_name: str, model_version: str) -> JSONResponse:
        manager.require_open()
        manager.registry.set_default(model_name, model_version)
        return status(f'Default version successfully updated for model "{model_name}" '
                      f'to "{model_version}"')

    @app.delete("/models/{model_name}")
    async def unregister_default(model_name: str) -> JSONResponse:
        require_model_api()
        return status(await manager.unregister(model_name, None))

    @app.delete("/models/{model_name}/{model_version}")
    async def unregister_version(model_name: str, model_version: str) -> JSONResponse:
        require_model_api()
        return status(await manager.unregister(model_name, model_version))

    return app

"""Error handling for the FastAPI apps: every error is TorchServe's JSON with `x-request-id`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from serving.errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ServingError,
    http_status,
)
from serving.gateway.requestids import scope_request_id
from serving.gateway.responses import error_body, error_headers

log = logging.getLogger(__name__)


def error_response(error: ServingError, request_id: str) -> Response:
    headers = {k.decode("latin-1"): v.decode("latin-1")
               for k, v in error_headers(error, request_id)}
    return Response(error_body(error), status_code=http_status(error.code), headers=headers)


def _request_id(request: Request) -> str:
    return scope_request_id(request.scope)


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route answers on this path. Starlette's own 405 names only the first
    route that matched the path, and each method here is a route of its own."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to one error body, and stamp `x-request-id` on every response."""

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> Response:
        return error_response(exc, _request_id(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        error: ServingError
        if exc.status_code == 404:
            error = NotFound(f"Requested resource is not found: {request.url.path}")
        elif exc.status_code == 405:
            allow = allowed_methods(app, request)
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}; "
                                     f"allowed: {', '.join(allow)}", allow=allow)
        else:
            error = ServingError(str(exc.detail), exc.status_code)
        return error_response(error, _request_id(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        return error_response(BadRequest(problems), _request_id(request))

    @app.middleware("http")
    async def stamp_request_id(request: Request, call_next: Any) -> Response:
        # A bug anywhere below is answered here, as TorchServe's JSON, and goes no further:
        # Starlette's own last-resort handler would answer, then re-raise into uvicorn, which
        # drops the client's keep-alive connection.
        try:
            response: Response = await call_next(request)
        except Exception as exc:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(InternalError(f"Internal error: {type(exc).__name__}"),
                                  _request_id(request))
        if "x-request-id" not in response.headers:
            response.headers["x-request-id"] = _request_id(request)
        return response

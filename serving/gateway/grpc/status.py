"""The one place errors become gRPC statuses: `ServingError` codes through serving.errors'
table (TorchServe's GRPCUtils mapping), a bug as INTERNAL, the request id in the trailers."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from serving.errors import ServingError, grpc_status_name

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Rpc = Callable[[Any, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]


def status_code(error: ServingError) -> grpc.StatusCode:
    return grpc.StatusCode[grpc_status_name(error.code)]


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: ServingError,
                request_id: str | None = None) -> NoReturn:
    """End the call with the error's status; its message is the details string."""
    trailers = (("x-request-id", request_id),) if request_id else ()
    await context.abort(status_code(error), error.message, trailers)
    raise AssertionError("context.abort returned")  # it always raises


def unary(rpc: Rpc[Request, Response]) -> Rpc[Request, Response]:
    """A unary rpc whose ServingError becomes its status and whose bug becomes INTERNAL
    (logged), so no exception escapes into grpc's own last-resort handling."""

    @functools.wraps(rpc)
    async def wrapped(self: Any, request: Request,
                      context: grpc.aio.ServicerContext[Any, Any]) -> Response:
        try:
            return await rpc(self, request, context)
        except ServingError as e:
            await abort(context, e)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            log.exception("unexpected error in %s", rpc.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {type(e).__name__}")
            raise AssertionError("context.abort returned") from None

    return wrapped

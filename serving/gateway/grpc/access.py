"""The access log of the gRPC APIs: one line per call, as TorchServe's gRPC interceptor writes.

TorchServe logs each call of its gRPC services when the call closes: the peer, `gRPC`, the full
method name, `HTTP/2.0`, the call's gRPC status code (its number: 0 OK, 5 NOT_FOUND, ...) and
the milliseconds. Its Requests2XX/4XX/5XX counters are counted where HTTP responses are sent,
so gRPC calls are in none of them; here neither. Health checks and reflection (which
TorchServe does not serve) are not logged: a probe every few seconds would fill the log.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

Behaviour = Callable[[Any, Any], Any]
PROTOCOL = "HTTP/2.0"


class AccessLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each rpc (but `skipped` services') so that its end writes an access-log line.
    First in the server's interceptors, so token refusals are logged too."""

    def __init__(self, access: logging.Logger, as_json: bool,
                 skipped: tuple[str, ...]) -> None:
        self._access = access
        self._json = as_json
        self._skipped = skipped

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method.lstrip("/")
        if handler is None or method.startswith(self._skipped):
            return handler
        return self._logged(handler, method)

    def _logged(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        de, se = handler.request_deserializer, handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap(handler.stream_stream, method), de, se)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(handler.stream_unary, method), de, se)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap(handler.unary_stream, method), de, se)
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, method), de, se)

    def _wrap(self, behaviour: Behaviour, method: str) -> Behaviour:
        if inspect.isasyncgenfunction(behaviour):
            async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                                ) -> AsyncIterator[Any]:
                start = time.perf_counter()
                error: BaseException | None = None
                try:
                    async for answer in behaviour(request, context):
                        yield answer
                except BaseException as e:
                    error = e
                    raise
                finally:
                    self._log(context, method, error, start)

            return streaming

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as e:
                error = e
                raise
            finally:
                self._log(context, method, error, start)

        return unary

    def _log(self, context: grpc.aio.ServicerContext[Any, Any], method: str,
             error: BaseException | None, start: float) -> None:
        code = status_number(context, error)
        ms = round((time.perf_counter() - start) * 1000)
        remote = peer_address(context.peer())
        if self._json:
            trailers = dict(context.trailing_metadata() or ())
            request_id = trailers.get("x-request-id")
            self._access.info("%s", json.dumps({
                "remote": remote, "method": "gRPC", "path": method, "protocol": PROTOCOL,
                "status": code, "duration_ms": ms,
                "request_id": request_id if isinstance(request_id, str) else None,
            }, separators=(",", ":")))
        else:
            # TorchServe's line for a gRPC call: /remote:port "gRPC Service/Method HTTP/2.0"
            # <gRPC status code> ms
            self._access.info('/%s "gRPC %s %s" %d %d', remote, method, PROTOCOL, code, ms)


def status_number(context: grpc.aio.ServicerContext[Any, Any],
                  error: BaseException | None) -> int:
    """The gRPC status the call ends with, as a number: the one set or aborted with, else
    CANCELLED for a client that went away, UNKNOWN for an escaped exception (grpc's own
    answer), OK."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return int(code.value[0])
    if isinstance(code, int):
        return code
    if isinstance(error, asyncio.CancelledError):
        return int(grpc.StatusCode.CANCELLED.value[0])
    if error is not None:
        return int(grpc.StatusCode.UNKNOWN.value[0])
    return int(grpc.StatusCode.OK.value[0])


def peer_address(peer: str | None) -> str:
    """grpc's `ipv4:127.0.0.1:5000` / `ipv6:[::1]:5000` as the HTTP access log writes a
    client (`127.0.0.1:5000`, `::1:5000`)."""
    if not peer:
        return "-"
    _, _, address = peer.partition(":")
    host, _, port = address.rpartition(":")
    return f"{host.strip('[]')}:{port}" if host else address

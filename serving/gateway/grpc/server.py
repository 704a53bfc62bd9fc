"""The two gRPC listeners (TorchServe's 7070 inference and 7071 management), on the gateway's
event loop: options from the settings, TLS, token authorization, the access log, health and
reflection."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from serving.errors import ConfigError, ServingError
from serving.gateway.auth import TokenAuthorization, TokenKind
from serving.gateway.grpc import inference, management, oip
from serving.gateway.grpc.access import AccessLogInterceptor
from serving.gateway.grpc.protos import (
    inference_pb2_grpc,
    management_pb2_grpc,
)
from serving.logconfig import ACCESS_LOGGER
from serving.routing.dataplane import DataPlane
from serving.routing.manager import ModelManager
from serving.settings import Settings

log = logging.getLogger(__name__)

# Infrastructure every client may call without a key: they carry no model data (a Kubernetes
# gRPC probe has no key to send).
OPEN_SERVICES = (HEALTH_SERVICE, reflection.SERVICE_NAME)


@dataclass(frozen=True, slots=True)
class Listener:
    what: str
    host: str
    port: int
    kind: TokenKind
    max_age_ms: int | None
    max_age_grace_ms: int | None


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """TorchServe's gRPC rule: metadata `authorization: Bearer <key>`, the listener's key."""

    def __init__(self, auth: TokenAuthorization, kind: TokenKind) -> None:
        self._auth = auth
        self._kind = kind

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.lstrip("/").startswith(OPEN_SERVICES):
            return handler
        key = next((v for k, v in details.invocation_metadata or ()
                    if k == "authorization"), None)
        try:
            self._auth.check(self._kind, key if isinstance(key, str | bytes) else None)
        except ServingError as e:
            return _refusal(handler, e.message)
        return handler


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""
    code = grpc.StatusCode.UNAUTHENTICATED

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                        ) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # an async generator, as the streaming behaviours are

    de, se = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, de, se)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, de, se)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, de, se)
    return grpc.unary_unary_rpc_method_handler(unary, de, se)


def listeners(s: Settings) -> list[Listener]:
    return [
        Listener("gRPC Inference API", s.grpc_inference_address, s.grpc_inference_port,
                 TokenKind.INFERENCE, s.grpc_inference_max_connection_age_ms,
                 s.grpc_inference_max_connection_age_grace_ms),
        Listener("gRPC Management API", s.grpc_management_address, s.grpc_management_port,
                 TokenKind.MANAGEMENT, s.grpc_management_max_connection_age_ms,
                 s.grpc_management_max_connection_age_grace_ms),
    ]


def _options(s: Settings, listener: Listener) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        # A second server on the same port must fail to start, not share it silently.
        ("grpc.so_reuseport", 0),
        # Larger messages are refused by grpc itself with RESOURCE_EXHAUSTED (TorchServe
        # bounds gRPC messages by max_request_size too).
        ("grpc.max_receive_message_length", s.max_request_size),
        ("grpc.max_send_message_length", -1),  # answers are bounded by max_response_size
    ]
    if listener.max_age_ms is not None:
        options.append(("grpc.max_connection_age_ms", listener.max_age_ms))
    if listener.max_age_grace_ms is not None:
        options.append(("grpc.max_connection_age_grace_ms", listener.max_age_grace_ms))
    return options


def _credentials(s: Settings) -> grpc.ServerCredentials | None:
    if not s.enable_grpc_ssl:
        return None
    assert s.certificate_file is not None and s.private_key_file is not None
    try:
        key = s.private_key_file.read_bytes()
        chain = s.certificate_file.read_bytes()
    except OSError as e:
        raise ConfigError(f"enable_grpc_ssl: cannot read {e.filename}: {e.strerror}") from None
    return grpc.ssl_server_credentials([(key, chain)])


def _has_descriptor(service: str) -> bool:
    try:
        descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        return False
    return True


class GrpcServers:
    """Both gRPC servers: `start` binds them (a busy port is a start-up error), `stop` ends
    them after the REST APIs' drain."""

    def __init__(self, settings: Settings, manager: ModelManager, plane: DataPlane,
                 auth: TokenAuthorization | None) -> None:
        self._settings = settings
        self._manager = manager
        self._plane = plane
        self._auth = auth
        self._servers: list[grpc.aio.Server] = []
        self._health: list[health_aio.HealthServicer] = []

    async def start(self) -> None:
        s = self._settings
        credentials = _credentials(s)
        inference_listener, management_listener = listeners(s)
        await self._serve(inference_listener, credentials, self._add_inference)
        await self._serve(management_listener, credentials, self._add_management)

    def _add_inference(self, server: grpc.aio.Server) -> Sequence[str]:
        inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            inference.InferenceService(self._plane), server)
        return (inference.SERVICE_NAME, *oip.add_to_server(oip.OipService(self._plane), server))

    def _add_management(self, server: grpc.aio.Server) -> Sequence[str]:
        management_pb2_grpc.add_ManagementAPIsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            management.ManagementService(self._manager), server)
        return (management.SERVICE_NAME,)

    async def _serve(self, listener: Listener, credentials: grpc.ServerCredentials | None,
                     add: Callable[[grpc.aio.Server], Sequence[str]]) -> None:
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self._settings.access_log:  # first: it logs the token refusals too
            interceptors.append(AccessLogInterceptor(
                logging.getLogger(ACCESS_LOGGER), self._settings.access_log_format == "json",
                skipped=OPEN_SERVICES))
        if self._auth is not None:
            interceptors.append(TokenInterceptor(self._auth, listener.kind))
        server = grpc.aio.server(interceptors=interceptors,
                                 options=_options(self._settings, listener))
        names = list(add(server))
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        # Reflection describes the services whose descriptors this process holds (TorchServe's
        # alias of the OIP service has none of its own).
        described = [n for n in names if _has_descriptor(n)]
        reflection.enable_server_reflection(
            [*described, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
        host = f"[{listener.host}]" if ":" in listener.host else listener.host
        address = f"{host}:{listener.port}"
        try:
            port = (server.add_secure_port(address, credentials) if credentials is not None
                    else server.add_insecure_port(address))
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError(f"{listener.what}: cannot listen on {address} (in use, or not "
                              "an address of this machine)")
        await server.start()
        for name in ("", *names):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._servers.append(server)
        self._health.append(health)
        scheme = "grpcs" if credentials is not None else "grpc"
        log.info("%s listening on %s://%s:%s", listener.what, scheme, host, port)

    async def draining(self) -> None:
        """Shutdown started: health says NOT_SERVING so balancers stop sending calls."""
        for health in self._health:
            await health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Calls still running get `grace_s`, then are cancelled."""
        for server in self._servers:
            await server.stop(grace_s)
        self._servers.clear()

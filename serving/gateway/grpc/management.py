"""TorchServe's gRPC management API (`org.pytorch.serve.grpc.management.ManagementAPIsService`),
calling the same ModelManager functions as the REST management API.

proto3 scalars cannot be absent, so (as in TorchServe) a zero or empty field means "not given":
the server's default applies.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import grpc

from serving.errors import BadRequest, Forbidden
from serving.gateway.grpc.protos import management_pb2 as pb
from serving.gateway.grpc.protos import management_pb2_grpc as pb_grpc
from serving.gateway.grpc.status import unary
from serving.routing.describe import describe, list_models
from serving.routing.manager import ModelManager, Registration

Context: TypeAlias = grpc.aio.ServicerContext  # grpc is untyped: Any to mypy
MAX_PAGE = 100  # as the REST API: a larger limit is served as 100


def _reply(msg: str) -> pb.ManagementResponse:
    return pb.ManagementResponse(msg=msg)


def _json(value: Any) -> pb.ManagementResponse:
    return _reply(json.dumps(value, indent=2))


def _given(value: int) -> int | None:
    return value if value > 0 else None


def _required(value: str, field: str) -> str:
    if not value:
        raise BadRequest(f"Parameter {field} is required.")
    return value


class ManagementService(pb_grpc.ManagementAPIsServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def _require_model_api(self) -> None:
        if not self._manager.settings.enable_model_api:
            raise Forbidden("Model API disabled")

    @unary
    async def DescribeModel(self, request: pb.DescribeModelRequest, context: Context
                            ) -> pb.ManagementResponse:
        name = _required(request.model_name, "model_name")
        if request.customized:
            raise BadRequest("customized: the handler's describe_handle metadata is not served "
                             "yet; describe without customized")
        return _json(describe(self._manager.registry, name, request.model_version or None))

    @unary
    async def ListModels(self, request: pb.ListModelsRequest, context: Context
                         ) -> pb.ManagementResponse:
        if request.limit < 0 or request.next_page_token < 0:
            raise BadRequest("limit and next_page_token must not be negative")
        limit = min(request.limit or MAX_PAGE, MAX_PAGE)
        return _json(list_models(self._manager.registry, limit, request.next_page_token))

    @unary
    async def RegisterModel(self, request: pb.RegisterModelRequest, context: Context
                            ) -> pb.ManagementResponse:
        self._require_model_api()
        for field in ("batch_size", "initial_workers", "max_batch_delay", "response_timeout",
                      "startup_timeout"):
            if getattr(request, field) < 0:
                raise BadRequest(f"{field}: must not be negative, got {getattr(request, field)}")
        reg = Registration(
            url=_required(request.url.strip(), "url"),
            model_name=request.model_name.strip() or None,
            handler=request.handler.strip() or None, runtime=request.runtime.strip() or None,
            batch_size=_given(request.batch_size),
            max_batch_delay=_given(request.max_batch_delay),
            initial_workers=_given(request.initial_workers),
            synchronous=request.synchronous,
            response_timeout=_given(request.response_timeout),
            startup_timeout=_given(request.startup_timeout))
        _, message, _ = await self._manager.register(reg)
        return _reply(message)

    @unary
    async def ScaleWorker(self, request: pb.ScaleWorkerRequest, context: Context
                          ) -> pb.ManagementResponse:
        name = _required(request.model_name, "model_name")
        if request.min_worker < 0 or request.max_worker < 0:
            raise BadRequest("min_worker and max_worker must not be negative")
        # TorchServe's rule: min_worker 0 (not given) is 1; max_worker not given is min_worker.
        min_worker = request.min_worker or 1
        max_worker = request.max_worker or min_worker
        message, _ = await self._manager.scale(name, request.model_version or None, min_worker,
                                               max_worker, request.synchronous)
        return _reply(message)

    @unary
    async def SetDefault(self, request: pb.SetDefaultRequest, context: Context
                         ) -> pb.ManagementResponse:
        name = _required(request.model_name, "model_name")
        version = _required(request.model_version, "model_version")
        self._manager.require_open()
        self._manager.registry.set_default(name, version)
        return _reply(f'Default version successfully updated for model "{name}" to '
                      f'"{version}"')

    @unary
    async def UnregisterModel(self, request: pb.UnregisterModelRequest, context: Context
                              ) -> pb.ManagementResponse:
        self._require_model_api()
        name = _required(request.model_name, "model_name")
        return _reply(await self._manager.unregister(name, request.model_version or None))


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ManagementAPIsService"].full_name

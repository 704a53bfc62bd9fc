"""The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`), on the same
listener as TorchServe's inference service."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from serving.errors import ServingError
from serving.gateway.grpc.protos import open_inference_pb2 as pb
from serving.gateway.grpc.protos import open_inference_pb2_grpc as pb_grpc
from serving.gateway.grpc.status import unary
from serving.routing.dataplane import DataPlane

Context: TypeAlias = grpc.aio.ServicerContext  # grpc is untyped: Any to mypy
SERVER_NAME = "serving"
SERVER_VERSION = "0.1.0"


class OipService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    @unary
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context
                         ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @unary
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.server_ready())

    @unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context
                         ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self._plane.model_ready(request.name, request.version or None))

    @unary
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context
                             ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)

    @unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context
                            ) -> pb.ModelMetadataResponse:
        mv = self._plane.model_info(request.name, request.version or None)
        versions = [v.version for v in self._plane.model_versions(request.name)]
        return pb.ModelMetadataResponse(name=mv.name, versions=versions,
                                        platform="pytorch_torchserve")

    @unary
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context
                         ) -> pb.ModelInferResponse:
        raise ServingError("ModelInfer: pending the OIP codec", 501)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

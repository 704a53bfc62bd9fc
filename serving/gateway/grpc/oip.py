"""The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`), on the same
listener as TorchServe's inference service.

ModelInfer goes the way an OIP REST request with binary tensors goes (serving/oip/): the
message becomes the request header plus the tensors' raw bytes, is checked against the
model's declared metadata, runs through the data plane (the handler sees what it sees over
REST, see serving/oip/handler_bridge.py), and every output comes back in
`raw_output_contents`, as Triton's clients expect.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import grpc
import numpy as np

from serving import __version__
from serving.errors import BadRequest, NotFound, ServingError
from serving.gateway.grpc.protos import open_inference_pb2 as pb
from serving.gateway.grpc.protos import open_inference_pb2_grpc as pb_grpc
from serving.gateway.grpc.status import abort, unary
from serving.gateway.oip import SERVER_NAME
from serving.oip.metadata import model_metadata_dict
from serving.oip.requests import header_bytes, parse_request, worker_inputs
from serving.oip.responses import read_answer
from serving.oip.tensors import (
    element_count,
    flatten,
    join_bytes,
    json_to_raw,
)
from serving.routing.dataplane import DataPlane
from serving.types import InferenceRequest, InferenceResponse

Context: TypeAlias = grpc.aio.ServicerContext  # grpc is untyped: Any to mypy
# Which InferTensorContents field carries each datatype (FP16 and BF16 only travel raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def parameters(params: Any) -> dict[str, Any]:
    """A map<string, InferParameter> as plain values."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(param, choice)
    return out


def _contents_raw(tensor: Any, where: str) -> bytes:
    """A tensor given in `contents` as the raw little-endian bytes of its datatype."""
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise BadRequest(f"{where}: {tensor.datatype or 'no datatype'} data must be sent in "
                         "raw_input_contents" if tensor.datatype in ("FP16", "BF16")
                         else f"{where}: unknown datatype {tensor.datatype!r:.40}")
    values = list(getattr(tensor.contents, field))
    count = element_count(list(tensor.shape))
    if len(values) != count:
        raise BadRequest(f"{where}: shape needs {count} elements, contents has {len(values)}")
    if tensor.datatype == "BYTES":
        return join_bytes(values)
    if tensor.datatype == "BOOL":
        return np.asarray(values, dtype="|b1").tobytes()
    flat = flatten(values, tensor.datatype, count, where)  # range checks per datatype
    return json_to_raw(flat, tensor.datatype)


def to_header(message: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """The request header (as an OIP REST client with binary tensors would send it) and the
    tensors' bytes that follow it. Every output is asked for in binary."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for "
                         f"{len(message.inputs)} inputs")
    inputs, blobs = [], []
    for i, tensor in enumerate(message.inputs):
        where = f"input {tensor.name!r:.60}"
        if raw and tensor.HasField("contents"):
            raise BadRequest(f"{where}: has contents while raw_input_contents is used")
        blob = raw[i] if raw else _contents_raw(tensor, where)
        params = parameters(tensor.parameters)
        params["binary_data_size"] = len(blob)
        inputs.append({"name": tensor.name, "datatype": tensor.datatype,
                       "shape": list(tensor.shape), "parameters": params})
        blobs.append(blob)
    header: dict[str, Any] = {"inputs": inputs}
    if message.id:
        header["id"] = message.id
    header["parameters"] = {**parameters(message.parameters), "binary_data_output": True}
    if message.outputs:
        header["outputs"] = [{"name": o.name, "parameters": parameters(o.parameters)}
                             for o in message.outputs]
    return header, b"".join(blobs)


def to_response(answer: InferenceResponse) -> pb.ModelInferResponse:
    """The worker's OIP answer (a JSON header, then the outputs' bytes) as the message."""
    read = read_answer(answer)
    response = pb.ModelInferResponse(model_name=read.model_name,
                                     model_version=read.model_version, id=read.id)
    for out in read.outputs:
        raw = out.raw
        if raw is None:  # data as JSON: the worker answers binary when asked, but stay whole
            count = element_count(out.shape)
            raw = json_to_raw(flatten(out.data or [], out.datatype, count, out.name),
                              out.datatype)
        response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        response.raw_output_contents.append(raw)
    return response


class OipService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    @unary
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context
                         ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._plane.server_live())

    @unary
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.server_ready())

    @unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context
                         ) -> pb.ModelReadyResponse:
        # An unknown model (or version) is not ready, as over REST: no error.
        try:
            ready = self._plane.model_ready(request.name, request.version or None)
        except NotFound:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @unary
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context
                             ) -> pb.ServerMetadataResponse:
        # binary_tensor_data is a REST extension: gRPC tensors are always raw.
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__)

    @unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context
                            ) -> pb.ModelMetadataResponse:
        mv = self._plane.model_info(request.name, request.version or None)
        versions = [v.version for v in self._plane.model_versions(request.name)]
        meta = model_metadata_dict(mv.name, versions, mv.oip)
        response = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                            platform=meta["platform"])
        for kind in ("inputs", "outputs"):
            for tensor in meta[kind]:
                getattr(response, kind).add(**tensor)
        return response

    @unary
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context
                         ) -> pb.ModelInferResponse:
        plane = self._plane
        metadata = dict(context.invocation_metadata() or ())
        request_id = plane.request_id(request.id or metadata.get("x-request-id"))
        mv = plane.model_info(request.model_name, request.model_version or None)
        header, binary = to_header(request)
        parsed = parse_request(header, binary, mv.oip)
        timeout_ms = parsed.timeout_ms
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = max(1, int(remaining * 1000))
            timeout_ms = min(timeout_ms, deadline) if timeout_ms else deadline
        inputs = worker_inputs(header_bytes(header), parsed)
        headers = {k: v for k, v in metadata.items()
                   if isinstance(v, str) and k != "authorization"}
        try:
            answer = await plane.infer(mv.name, mv.version,
                                       InferenceRequest(request_id, inputs, headers),
                                       timeout_ms=timeout_ms)
            if answer.status >= 400:
                raise ServingError(_error_message(answer), answer.status)
            return to_response(answer)
        except ServingError as e:
            await abort(context, e, request_id)


def _error_message(answer: InferenceResponse) -> str:
    text = answer.body.decode("utf-8", "replace")
    try:
        data = json.loads(answer.body)
    except ValueError:
        return text
    message = data.get("message") if isinstance(data, dict) else None
    return message if isinstance(message, str) else text


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# TorchServe 0.12 serves the same protocol under a package of its own (proto/
# open_inference_grpc.proto in its jar); the messages are the same on the wire, so stubs
# compiled from TorchServe's file are answered by the same servicer.
TORCHSERVE_SERVICE_NAME = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"
RPCS: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


def add_to_server(servicer: OipService, server: Any) -> tuple[str, ...]:
    """Serve `servicer` under both service names; returns them."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(
        getattr(servicer, name), request_deserializer=request.FromString,
        response_serializer=response.SerializeToString)
        for name, (request, response) in RPCS.items()}
    names = (SERVICE_NAME, TORCHSERVE_SERVICE_NAME)
    for name in names:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
    return names

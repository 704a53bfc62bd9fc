"""TorchServe's gRPC inference API (`org.pytorch.serve.grpc.inference.InferenceAPIsService`).

Each rpc converts its message to an `InferenceRequest`, makes the one inference call, and
converts the answer back. What a handler sees is what TorchServe's gRPC frontend gives it:
each entry of the request's `input` map is one named input of raw bytes (no content type, so
the handler gets a bytearray under that name: `data` or `body` as clients usually send).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from google.protobuf import empty_pb2
from google.rpc import status_pb2

from serving.errors import BadRequest, InternalError, ServingError
from serving.gateway.grpc.protos import inference_pb2 as pb
from serving.gateway.grpc.protos import inference_pb2_grpc as pb_grpc
from serving.gateway.grpc.status import abort, status_code, unary
from serving.gateway.requestids import request_id_of
from serving.routing.manager import REQUEST_TIMEOUT_HEADER, ModelManager
from serving.types import InferenceRequest, InferenceResponse, Input

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext  # grpc is untyped: Any to mypy
# Metadata a handler must not see through `get_request_header` (the caller's key).
HIDDEN_METADATA = frozenset({"authorization"})


def request_headers(context: Context) -> dict[str, str]:
    """The call's text metadata, as the handler sees request headers (binary `-bin` entries
    and the authorization key left out), plus the deadline as x-request-timeout-ms."""
    headers = {key: value for key, value in (context.invocation_metadata() or ())
               if isinstance(value, str) and key not in HIDDEN_METADATA}
    remaining = context.time_remaining()
    if remaining is not None:
        # The queue bound is the client's deadline: a request still queued when the client
        # gave up never reaches a worker.
        ms = max(1, int(remaining * 1000))
        given = headers.get(REQUEST_TIMEOUT_HEADER)
        if given is None or not given.isdigit() or int(given) > ms:
            headers[REQUEST_TIMEOUT_HEADER] = str(ms)
    return headers


def to_request(message: pb.PredictionsRequest, context: Context) -> tuple[str, str | None,
                                                                          InferenceRequest]:
    if not message.model_name:
        raise BadRequest("Parameter model_name is required.")
    headers = request_headers(context)
    inputs = [Input(name, "", value) for name, value in message.input.items()]
    request = InferenceRequest(request_id_of(headers), inputs, headers)
    return message.model_name, message.model_version or None, request


async def run(manager: ModelManager, name: str, version: str | None,
              request: InferenceRequest) -> InferenceResponse:
    """The one inference call of the gRPC front ends: queue, wait, and withdraw the work if
    the call is cancelled (the client cancelled, or its deadline passed)."""
    job = manager.submit(name, version, request)
    try:
        answer = await job.future
    except BaseException:
        job.cancel()
        raise
    if answer.status >= 400:  # a handler's own error status (context.set_response_status)
        raise ServingError(answer.body.decode("utf-8", "replace"), answer.status)
    limit = manager.settings.max_response_size
    if len(answer.body) > limit:
        raise InternalError(f"Response of {len(answer.body)} bytes exceeds max_response_size "
                            f"({limit} bytes)")
    return answer


class InferenceService(pb_grpc.InferenceAPIsServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    @unary
    async def Ping(self, request: empty_pb2.Empty, context: Context
                   ) -> pb.TorchServeHealthResponse:
        if not self._manager.accepting:
            state = "Draining"
        else:
            state = "Healthy" if self._manager.healthy() else "Unhealthy"
        return pb.TorchServeHealthResponse(health=json.dumps({"status": state}, indent=2))

    @unary
    async def Predictions(self, request: pb.PredictionsRequest, context: Context
                          ) -> pb.PredictionResponse:
        name, version, req = to_request(request, context)
        try:
            answer = await run(self._manager, name, version, req)
        except ServingError as e:
            await abort(context, e, req.request_id)
        context.set_trailing_metadata((("x-request-id", req.request_id),))
        return pb.PredictionResponse(prediction=answer.body)

    async def StreamPredictions(self, request: pb.PredictionsRequest, context: Context
                                ) -> AsyncIterator[pb.PredictionResponse]:
        """The handler's intermediate answers, then its final one; an error ends the call."""
        try:
            name, version, req = to_request(request, context)
            async for answer in self._stream(name, version, req):
                yield pb.PredictionResponse(prediction=answer.body)
        except ServingError as e:
            await abort(context, e)

    async def StreamPredictions2(self, requests: AsyncIterator[pb.PredictionsRequest],
                                 context: Context) -> AsyncIterator[pb.PredictionResponse]:
        """Requests of a sequence in, answers out in order. A failed request is answered in
        the stream (its `status` set), as TorchServe does, and the stream goes on."""
        async for message in requests:
            sequence_id = message.sequence_id if message.HasField("sequence_id") else ""
            try:
                if not sequence_id:
                    raise BadRequest("Parameter sequenceId is required.")
                name, version, req = to_request(message, context)
                async for answer in self._stream(name, version, req):
                    yield pb.PredictionResponse(prediction=answer.body, sequence_id=sequence_id)
            except ServingError as e:
                yield _failed(e, sequence_id)

    async def _stream(self, name: str, version: str | None, request: InferenceRequest
                      ) -> AsyncIterator[InferenceResponse]:
        # One answer until routing carries a handler's intermediate responses.
        yield await run(self._manager, name, version, request)


def _failed(error: ServingError, sequence_id: str) -> pb.PredictionResponse:
    status = status_pb2.Status(code=status_code(error).value[0], message=error.message)
    return pb.PredictionResponse(sequence_id=sequence_id, status=status)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceAPIsService"].full_name

"""TorchServe's gRPC inference API (`org.pytorch.serve.grpc.inference.InferenceAPIsService`).

Each rpc converts its message to an `InferenceRequest`, calls the data plane
(serving/routing/dataplane.py) and converts the answer back. What a handler sees is what
TorchServe's gRPC frontend gives it: each entry of the request's `input` map is one named
input of raw bytes (no content type, so the handler gets a bytearray under that name: `data`
or `body` as clients usually send).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from google.protobuf import empty_pb2
from google.rpc import status_pb2

from serving.errors import BadRequest, ServingError
from serving.gateway.grpc.protos import inference_pb2 as pb
from serving.gateway.grpc.protos import inference_pb2_grpc as pb_grpc
from serving.gateway.grpc.status import abort, status_code, unary
from serving.gateway.predictions import request_timeout_ms
from serving.routing.dataplane import DataPlane
from serving.types import InferenceRequest, InferenceResponse, Input

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext  # grpc is untyped: Any to mypy
# Metadata a handler must not see through `get_request_header` (the caller's key).
HIDDEN_METADATA = frozenset({"authorization"})


def request_headers(context: Context) -> dict[str, str]:
    """The call's text metadata, as the handler sees request headers (binary `-bin` entries
    and the authorization key left out)."""
    return {key: value for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str) and key not in HIDDEN_METADATA}


def deadline_ms(context: Context, headers: dict[str, str]) -> int | None:
    """How long the request may wait for a worker: the call's deadline, lowered by an
    `x-request-timeout-ms` entry as over REST. A request still queued when the client gave up
    never reaches a worker."""
    bounds = []
    asked = request_timeout_ms(headers)
    if asked is not None:
        bounds.append(asked)
    remaining = context.time_remaining()
    if remaining is not None:
        bounds.append(max(1, int(remaining * 1000)))
    return min(bounds) if bounds else None


class Call:
    """One PredictionsRequest, converted: model, version, the protocol-neutral request and
    its queue bound."""

    __slots__ = ("model", "request", "timeout_ms", "version")

    def __init__(self, plane: DataPlane, message: pb.PredictionsRequest,
                 context: Context) -> None:
        if not message.model_name:
            raise BadRequest("Parameter model_name is required.")
        headers = request_headers(context)
        inputs = [Input(name, "", value) for name, value in message.input.items()]
        self.model = message.model_name
        self.version = message.model_version or None
        self.request = InferenceRequest(plane.request_id(headers.get("x-request-id")), inputs,
                                        headers)
        self.timeout_ms = deadline_ms(context, headers)


def checked(answer: InferenceResponse) -> InferenceResponse:
    """A handler's own error status (`context.set_response_status`) is an error here."""
    if answer.status >= 400:
        raise ServingError(answer.body.decode("utf-8", "replace"), answer.status)
    return answer


class InferenceService(pb_grpc.InferenceAPIsServiceServicer):
    """Cancelling the servicer's task (the client cancelled, or its deadline passed) withdraws
    the work: the data plane does that for a cancelled caller."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    @unary
    async def Ping(self, request: empty_pb2.Empty, context: Context
                   ) -> pb.TorchServeHealthResponse:
        _, body = self._plane.readiness()  # what REST /ping says: Healthy, Loading, ...
        return pb.TorchServeHealthResponse(health=json.dumps(body, indent=2))

    @unary
    async def Predictions(self, request: pb.PredictionsRequest, context: Context
                          ) -> pb.PredictionResponse:
        call = Call(self._plane, request, context)
        request_id = call.request.request_id
        try:
            answer = checked(await self._plane.infer(call.model, call.version, call.request,
                                                     timeout_ms=call.timeout_ms))
        except ServingError as e:
            await abort(context, e, request_id)
        context.set_trailing_metadata((("x-request-id", request_id),))
        return pb.PredictionResponse(prediction=answer.body)

    async def StreamPredictions(self, request: pb.PredictionsRequest, context: Context
                                ) -> AsyncIterator[pb.PredictionResponse]:
        """The handler's intermediate answers, then its final one; an error ends the call."""
        try:
            call = Call(self._plane, request, context)
            async for answer in self._stream(call):
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
                call = Call(self._plane, message, context)
                async for answer in self._stream(call):
                    yield pb.PredictionResponse(prediction=answer.body, sequence_id=sequence_id)
            except ServingError as e:
                yield _failed(e, sequence_id)

    async def _stream(self, call: Call) -> AsyncIterator[InferenceResponse]:
        answers = self._plane.stream(call.model, call.version, call.request,
                                     timeout_ms=call.timeout_ms)
        try:
            async for answer in answers:
                yield checked(answer)
        finally:
            # Leaving early (an error, the call cancelled): the work is withdrawn.
            aclose = getattr(answers, "aclose", None)
            if aclose is not None:
                await aclose()


def _failed(error: ServingError, sequence_id: str) -> pb.PredictionResponse:
    status = status_pb2.Status(code=status_code(error).value[0], message=error.message)
    return pb.PredictionResponse(sequence_id=sequence_id, status=status)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceAPIsService"].full_name

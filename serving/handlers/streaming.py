"""Intermediate answers of streaming handlers, as TorchServe handlers send them.

A TorchServe handler streams by calling `send_intermediate_predict_response(ret, req_id_map,
message, code, context)` (from `ts.protocol.otf_message_handler` or
`ts.handler_utils.utils`): both encode the answers in TorchServe's backend response format
and write them with `context.cl_socket.sendall(...)`. The worker puts an `IntermediateSocket`
there: it reads that format back and hands the answers, matched to their place in the batch,
to the worker's IPC (a STREAM message); the handler's code runs unchanged.

The format (big-endian int32 lengths): status code, message; then per answer its request id,
content type, status code, reason phrase, headers (count, then name/value pairs) and body;
a request id length of -1 ends the list.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Sequence

from serving.types import InferenceResponse

log = logging.getLogger(__name__)

_INT = struct.Struct("!i")

Intermediate = Callable[[list[tuple[int, InferenceResponse]]], None]
Cancelled = Callable[[], set[int]]


class StreamCancelled(Exception):
    """Raised into a streaming handler by its next intermediate answer once the client of
    every request of its batch has gone away: the work stops there."""


class MalformedResponse(ValueError):
    """Bytes that are not TorchServe's predict response format."""


def parse_predict_response(data: bytes | bytearray | memoryview
                           ) -> tuple[int, str, list[tuple[str, InferenceResponse]]]:
    """(status code, message, [(request id, answer)]) of one encoded predict response."""
    view = memoryview(data).cast("B")
    pos = 0

    def integer() -> int:
        nonlocal pos
        if pos + 4 > len(view):
            raise MalformedResponse("truncated")
        value: int = _INT.unpack_from(view, pos)[0]
        pos += 4
        return value

    def chunk() -> bytes:
        nonlocal pos
        size = integer()
        if size < 0 or pos + size > len(view):
            raise MalformedResponse(f"a length of {size} runs past the end")
        value = bytes(view[pos:pos + size])
        pos += size
        return value

    code = integer()
    message = chunk().decode("utf-8", "replace")
    answers: list[tuple[str, InferenceResponse]] = []
    while True:
        size = integer()
        if size == -1:
            break
        pos -= 4
        request_id = chunk().decode("utf-8", "replace")
        content_type = chunk().decode("utf-8", "replace") or None
        status = integer()
        chunk()  # the reason phrase: HTTP/1.1 clients ignore it, HTTP/2 has none
        headers = {}
        for _ in range(integer()):
            name = chunk().decode("utf-8", "replace")
            headers[name] = chunk().decode("utf-8", "replace")
        answers.append((request_id, InferenceResponse(chunk(), status, content_type, headers,
                                                      final=False)))
    return code, message, answers


class IntermediateSocket:
    """What a handler finds as `context.cl_socket` while it runs one batch."""

    def __init__(self, request_ids: Sequence[str], deliver: Intermediate | None,
                 clean_headers: Callable[[dict[str, str]], dict[str, str]],
                 cancelled: Cancelled | None = None) -> None:
        self._ids = list(request_ids)
        self._deliver = deliver
        self._clean = clean_headers
        self._cancelled = cancelled
        self._warned = False
        self.closed = False  # the batch is over: what is still sent is dropped

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        if self._deliver is None or self.closed:
            self._warn("intermediate answers are not delivered outside a running batch")
            return
        gone = self._cancelled() if self._cancelled is not None else set()
        if len(gone) >= len(self._ids):
            raise StreamCancelled("every client of this batch went away")
        try:
            code, message, parsed = parse_predict_response(data)
        except MalformedResponse as e:
            self._warn(f"an intermediate response that cannot be read ({e}) was dropped")
            return
        answers = []
        in_batch_order = [rid for rid, _ in parsed] == self._ids
        for j, (request_id, answer) in enumerate(parsed):
            index = j if in_batch_order else self._index(request_id)
            if index is None or index in gone:
                continue
            if code != 200:  # TorchServe's frontend answers an error with the message
                answer = InferenceResponse(
                    json.dumps({"code": code, "type": "InternalServerException",
                                "message": message}, indent=2).encode(),
                    code, "application/json", {}, final=False)
            answer.headers = self._clean(answer.headers)
            answers.append((index, answer))
        if answers:
            self._deliver(answers)

    def _index(self, request_id: str) -> int | None:
        found = [i for i, rid in enumerate(self._ids) if rid == request_id]
        if len(found) == 1:
            return found[0]
        self._warn(f"an intermediate answer for request id {request_id!r:.60} was dropped: "
                   f"{'no' if not found else 'more than one'} request of the batch has it")
        return None

    def _warn(self, what: str) -> None:
        if not self._warned:  # once per batch: a handler streaming tokens would flood the log
            log.warning("%s", what)
            self._warned = True

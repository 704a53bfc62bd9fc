"""The batch messages: how a batch is laid out on the wire, on both sides of the socket.

PREDICT meta: `{"batch": n, "items": [{"id", "h": {headers}, "in": [[name, content type]]}]}`
with one blob per input, in order. RESULT meta: `{"batch": n, "items": [{"id", "s": status,
"ct": content type, "h": {headers}}]}` with one blob per item, or `{"batch": n, "error": {...}}`
when the whole batch failed. STREAM meta (intermediate answers of a streaming handler, sent
before the batch's RESULT): `{"batch": n, "items": [{"i": index in the batch, "id", "s", "ct",
"h"}]}` with one blob per item.
A RESULT also carries `"t"`, the seconds the worker spent on the batch. The handler's metric
updates travel in METRICS frames of their own (serving/workers/main.py says when).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from serving.errors import ServingError
from serving.types import InferenceRequest, InferenceResponse
from serving.workers.ipc import Blob, Kind, Message, ProtocolError

if TYPE_CHECKING:
    from serving.handlers.service import HandlerService
    from serving.workers.channel import BlockingChannel


def encode_batch(batch_id: int, requests: Sequence[InferenceRequest], ahead: bool = False
                 ) -> tuple[dict[str, Any], list[Blob]]:
    """Gateway side: the PREDICT message for a batch; `ahead`: sent while the worker runs
    another (it then checks for cancellations before starting it)."""
    items = []
    blobs: list[Blob] = []
    for req in requests:
        items.append({"id": req.request_id, "h": req.headers,
                      "in": [[i.name, i.content_type] for i in req.inputs]})
        blobs.extend(i.value for i in req.inputs)
    if ahead:
        return {"batch": batch_id, "items": items, "ahead": 1}, blobs
    return {"batch": batch_id, "items": items}, blobs


def decode_result(msg: Message, requests: Sequence[InferenceRequest]
                  ) -> list[InferenceResponse] | ServingError:
    """Gateway side: the answers of a RESULT message, or the error for the whole batch.

    Each answer must carry the id of the request at its position: an answer can never
    reach another request's client. A message that is not such an answer (wrong count, ids or
    types) raises ProtocolError: the worker that sent it cannot be trusted with more batches.
    """
    meta = msg.meta
    if "error" in meta:
        error = meta["error"]
        if not isinstance(error, dict) or type(error.get("code", 500)) is not int:
            raise ProtocolError(f"batch error is not an error object: {error!r:.100}")
        return ServingError.from_dict(error)
    items = meta.get("items")
    if not isinstance(items, list):
        raise ProtocolError("result carries neither items nor an error")
    if len(items) != len(requests) or len(msg.blobs) != len(requests):
        raise ProtocolError(f"{len(items)} answers and {len(msg.blobs)} bodies for a batch "
                            f"of {len(requests)}")
    answers = []
    for item, req, blob in zip(items, requests, msg.blobs, strict=True):
        if not isinstance(item, dict) or item.get("id") != req.request_id:
            raise ProtocolError("answers do not match the batch's request ids")
        answers.append(_answer(item, req, blob, True))
    return answers


def decode_stream(msg: Message, requests: Sequence[InferenceRequest]
                  ) -> list[tuple[int, InferenceResponse]]:
    """Gateway side: the intermediate answers of a STREAM message, by index in the batch;
    ProtocolError unless each names a request of the batch by its index and id."""
    items = msg.meta.get("items")
    if not isinstance(items, list) or len(items) != len(msg.blobs):
        raise ProtocolError("intermediate result is not a list of answers with their bodies")
    answers = []
    for item, blob in zip(items, msg.blobs, strict=True):
        index = item.get("i") if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < len(requests) or \
                item.get("id") != requests[index].request_id:
            raise ProtocolError("intermediate answer does not match a request of the batch")
        answers.append((index, _answer(item, requests[index], blob, False)))
    return answers


def _answer(item: dict[str, Any], req: InferenceRequest, blob: Blob, final: bool
            ) -> InferenceResponse:
    status, ctype, headers = item.get("s"), item.get("ct"), item.get("h")
    if type(status) is not int or not (ctype is None or isinstance(ctype, str)) or \
            not isinstance(headers, dict) or \
            not all(isinstance(v, str) for v in headers.values()):
        raise ProtocolError(f"answer for request {req.request_id!r:.60} is malformed")
    return InferenceResponse(bytes(blob), status, ctype, headers, final)



def run_batch(service: HandlerService, msg: Message, channel: BlockingChannel | None = None
              ) -> tuple[dict[str, Any], list[Blob]]:
    """Worker side: run a PREDICT message through the handler, build the RESULT message.
    Through `channel`, intermediate answers go out at once (STREAM) and cancellations come
    in."""
    from serving.handlers.service import WorkItem

    start = time.perf_counter()
    blobs = iter(msg.blobs)
    work = [WorkItem(item["id"], item["h"],
                     [(name, ctype, next(blobs)) for name, ctype in item["in"]])
            for item in msg.meta["items"]]
    batch_id = msg.meta["batch"]
    intermediate = None
    if channel is not None:
        def intermediate(answers: list[tuple[int, InferenceResponse]]) -> None:
            items = [{"i": i, "id": work[i].request_id, "s": r.status, "ct": r.content_type,
                      "h": r.headers} for i, r in answers]
            channel.send(Kind.STREAM, {"batch": batch_id, "items": items},
                         [r.body for _, r in answers])
    cancelled = None
    if channel is not None:
        def cancelled() -> set[int]:
            return channel.cancelled(batch_id)
    # A batch sent ahead waited in the socket while the one before it ran: requests whose
    # client went away meanwhile (the gateway's CANCEL came behind it) are left out.
    gone: set[int] = set()
    if channel is not None and msg.meta.get("ahead"):
        gone = channel.cancelled(batch_id)
    try:
        results = service.predict(work, intermediate, cancelled, gone)
    finally:
        if channel is not None:
            channel.forget(batch_id)
    meta: dict[str, Any] = {"batch": batch_id}
    if isinstance(results, ServingError):
        meta["error"] = results.to_dict()
        blobs_out: list[Blob] = []
    else:
        meta["items"] = [{"id": w.request_id, "s": r.status, "ct": r.content_type,
                          "h": r.headers} for w, r in zip(work, results, strict=True)]
        blobs_out = [r.body for r in results]
    meta["t"] = time.perf_counter() - start
    return meta, blobs_out

"""The batch messages: how a batch is laid out on the wire, on both sides of the socket.

PREDICT meta: `{"batch": n, "items": [{"id", "h": {headers}, "in": [[name, content type]]}]}`
with one blob per input, in order. RESULT meta: `{"batch": n, "items": [{"id", "s": status,
"ct": content type, "h": {headers}}]}` with one blob per item, or `{"batch": n, "error": {...}}`
when the whole batch failed. A RESULT also carries `"t"`, the seconds the worker spent on
the batch, and `"m"`, the handler's metric updates, when it recorded any.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from serving.errors import ServingError
from serving.types import InferenceRequest, InferenceResponse
from serving.workers.ipc import Blob, Message, ProtocolError

if TYPE_CHECKING:
    from serving.handlers.service import HandlerService


def encode_batch(batch_id: int, requests: Sequence[InferenceRequest]
                 ) -> tuple[dict[str, Any], list[Blob]]:
    """Gateway side: the PREDICT message for a batch."""
    items = []
    blobs: list[Blob] = []
    for req in requests:
        items.append({"id": req.request_id, "h": req.headers,
                      "in": [[i.name, i.content_type] for i in req.inputs]})
        blobs.extend(i.value for i in req.inputs)
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
        status, ctype, headers = item.get("s"), item.get("ct"), item.get("h")
        if type(status) is not int or not (ctype is None or isinstance(ctype, str)) or \
                not isinstance(headers, dict) or \
                not all(isinstance(v, str) for v in headers.values()):
            raise ProtocolError(f"answer for request {req.request_id!r:.60} is malformed")
        answers.append(InferenceResponse(bytes(blob), status, ctype, headers))
    return answers


def run_batch(service: HandlerService, msg: Message) -> tuple[dict[str, Any], list[Blob]]:
    """Worker side: run a PREDICT message through the handler, build the RESULT message."""
    from serving.handlers.service import WorkItem

    start = time.perf_counter()
    blobs = iter(msg.blobs)
    work = [WorkItem(item["id"], item["h"],
                     [(name, ctype, next(blobs)) for name, ctype in item["in"]])
            for item in msg.meta["items"]]
    results = service.predict(work)
    meta: dict[str, Any] = {"batch": msg.meta["batch"]}
    updates = service.context.metrics.drain()
    if updates:
        meta["m"] = updates
    if isinstance(results, ServingError):
        meta["error"] = results.to_dict()
        blobs_out: list[Blob] = []
    else:
        meta["items"] = [{"id": w.request_id, "s": r.status, "ct": r.content_type,
                          "h": r.headers} for w, r in zip(work, results, strict=True)]
        blobs_out = [r.body for r in results]
    meta["t"] = time.perf_counter() - start
    return meta, blobs_out

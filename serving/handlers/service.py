"""Running batches through a TorchServe handler: context, input decoding, output encoding."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import ts
from ts.context import Context, RequestProcessor
from ts.utils.util import PredictionException

from serving.errors import BadRequest, ClientCancelled, InsufficientStorage, ServingError
from serving.handlers.loader import Handler, load_handler
from serving.handlers.logcontext import current_request_ids
from serving.handlers.metrics import HandlerMetrics
from serving.handlers.streaming import (
    Cancelled,
    Intermediate,
    IntermediateSocket,
    StreamCancelled,
)
from serving.oip import handler_bridge
from serving.oip.metadata import UNDECLARED, ModelMetadata, from_model_yaml
from serving.types import InferenceResponse

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkItem:
    """One request of a batch as the worker received it."""

    request_id: str
    headers: dict[str, str]
    inputs: list[tuple[str, str, Any]]  # (name, content type, raw bytes-like value)


# The response header by which TorchServe marks a streamed answer: "true" on intermediate
# answers, "false" on the last.
STREAM_NEXT = "ts_stream_next"


class PredictionFailed(ServingError):
    code = 503
    type_name = "InternalServerException"


class HandlerService:
    """A handler loaded per TorchServe's contract, and its `ts.context.Context`."""

    def __init__(self, handler: Handler, context: Context, decode_input: bool = True) -> None:
        self.handler = handler
        self.context = context
        self.decode_input = decode_input
        self.optimization: dict[str, Any] | None = None  # the pipeline's report, if one ran
        # How OIP requests reach this handler and its answers become tensors (oip: block).
        self.oip: ModelMetadata = UNDECLARED
        self._oip_items: dict[int, handler_bridge.OipItem] = {}
        self._version = ""  # the archive's model version, which OIP answers carry

    @classmethod
    def load(cls, *, model_name: str, model_dir: Path, manifest: dict[str, Any],
             handler_spec: str, batch_size: int, gpu_id: int | None,
             model_yaml_config: dict[str, Any], decode_input: bool = True,
             limit_max_image_pixels: bool = True,
             metrics_config: str | None = None) -> HandlerService:
        metrics = HandlerMetrics(model_name, metrics_config)
        context = Context(model_name, str(model_dir), manifest, batch_size, gpu_id,
                          ts.__version__, limit_max_image_pixels, metrics, model_yaml_config)
        handler = load_handler(handler_spec)
        service = cls(handler, context, decode_input)
        service.oip = from_model_yaml(model_yaml_config)
        service._version = str((manifest.get("model") or {}).get("modelVersion") or "")
        handler.initialize(context)
        return service

    def predict(self, items: list[WorkItem], intermediate: Intermediate | None = None,
                cancelled: Cancelled | None = None, gone: Collection[int] = ()
                ) -> list[InferenceResponse] | ServingError:
        """Run one batch; a failure of the batch as a whole is returned, not raised.
        `intermediate` receives what a streaming handler sends before its final answers;
        `cancelled` tells which requests' clients went away (a streaming handler is stopped
        once all have); both speak of requests by their index in `items`.

        An OIP request whose tensors cannot be decoded is answered with its error and left
        out of the batch the handler sees; so is a request in `gone` (its client went away
        before the batch started: the gateway drops whatever answers it).
        """
        rows: list[dict[str, Any]] = []
        kept: list[int] = []  # index in `items` of each request the handler sees
        refused: dict[int, InferenceResponse] = {}
        self._oip_items = {}
        for i, item in enumerate(items):
            if gone and i in gone:
                refused[i] = _error_answer(ClientCancelled(
                    "the client went away before its batch started"))
                continue
            try:
                rows.append(self._inputs(item, len(kept)))
                kept.append(i)
            except ServingError as e:
                refused[i] = _error_answer(e)
            except Exception as e:  # an OIP tensor numpy cannot build: that request's error
                log.warning("request %s: its inputs cannot be decoded", item.request_id,
                            exc_info=True)
                refused[i] = _error_answer(BadRequest(
                    f"the request's inputs cannot be decoded: {type(e).__name__}: {e}"))
        if not kept:
            return [refused[i] for i in range(len(items))]
        if refused:
            intermediate, cancelled = _reindexed(kept, intermediate, cancelled)
        answers = self._run([items[i] for i in kept], rows, intermediate, cancelled)
        if not refused or isinstance(answers, ServingError):
            return answers
        merged = iter(answers)
        return [refused[i] if i in refused else next(merged) for i in range(len(items))]

    def _run(self, items: list[WorkItem], batch: list[dict[str, Any]],
             intermediate: Intermediate | None, cancelled: Cancelled | None
             ) -> list[InferenceResponse] | ServingError:
        ctx = self.context
        ctx.request_ids = {i: item.request_id for i, item in enumerate(items)}
        ctx.request_processor = [_processor(item) for item in items]
        ctx.metrics.request_ids = ctx.request_ids
        # Where TorchServe's send_intermediate_predict_response writes.
        ctx.cl_socket = stream = IntermediateSocket([item.request_id for item in items],
                                                    intermediate, _http_headers, cancelled)
        token = current_request_ids.set(",".join(item.request_id for item in items)[:400])
        try:
            return self._predict(items, batch)
        finally:
            stream.closed = True
            current_request_ids.reset(token)

    def _predict(self, items: list[WorkItem], batch: list[dict[str, Any]]
                 ) -> list[InferenceResponse] | ServingError:
        ctx = self.context
        start = time.perf_counter()
        try:
            outputs = self.handler.entry_point(batch, ctx)
        except PredictionException as e:
            return PredictionFailed(str(e.message), int(e.error_code))
        except StreamCancelled:
            log.info("stopped streaming: every client of the batch went away")
            return ClientCancelled("The client went away; the handler was stopped")
        except (MemoryError, torch.OutOfMemoryError):
            log.exception("out of memory in the handler")
            return InsufficientStorage("Out of resources")
        except Exception:
            log.exception("the handler raised")
            return PredictionFailed("Prediction failed")
        except BaseException:  # sys.exit(), KeyboardInterrupt: the batch fails, not the worker
            log.exception("the handler raised a BaseException; the worker keeps serving")
            return PredictionFailed("Prediction failed")
        if not isinstance(outputs, list):
            log.warning("handler returned %s, not a list", type(outputs).__name__)
            return PredictionFailed("Invalid model predict output")
        if len(outputs) != len(items):
            log.warning("handler returned %d answers for a batch of %d", len(outputs), len(items))
            return PredictionFailed(f"number of batch response mismatched: expected "
                                    f"{len(items)}, got {len(outputs)}")
        ctx.metrics.record("PredictionTime", "ms",
                           round((time.perf_counter() - start) * 1000, 2))
        try:
            return [self._result(i, out) for i, out in enumerate(outputs)]
        except BaseException:  # unserialisable output, a circular structure, a bad status
            log.warning("handler output cannot be serialised", exc_info=True)
            return PredictionFailed("Unsupported model output data type.")

    def _inputs(self, item: WorkItem, idx: int) -> dict[str, Any]:
        if handler_bridge.is_oip(item.inputs):
            oip = handler_bridge.decode(item.inputs)
            self._oip_items[idx] = oip
            return handler_bridge.handler_row(oip, self.oip)
        return {name: decode_value(ctype, value, self.decode_input)
                for name, ctype, value in item.inputs}

    def _result(self, idx: int, value: Any) -> InferenceResponse:
        ctx = self.context
        status, _ = ctx.get_response_status(idx)
        oip = self._oip_items.get(idx)
        if oip is not None and int(status or 200) < 400:
            return self._oip_result(idx, value, oip)
        headers = _http_headers(ctx.get_response_headers(idx))
        if headers.get(STREAM_NEXT) == "true":  # it streamed: this answer is its last
            headers[STREAM_NEXT] = "false"
        body, inferred = encode_value(value)
        content_type = next((headers.pop(k) for k in list(headers)
                             if k.lower() == "content-type"), None) or inferred
        return InferenceResponse(body, int(status or 200), content_type, headers)


    def _oip_result(self, idx: int, value: Any, oip: handler_bridge.OipItem
                    ) -> InferenceResponse:
        ctx = self.context
        try:
            body, ctype, headers = handler_bridge.encode_answer(
                value, oip, self.oip, ctx.model_name, self._version, ctx.request_ids[idx])
        except ServingError as e:
            log.warning("OIP answer of request %s: %s", ctx.request_ids[idx], e.message)
            return _error_answer(e)
        return InferenceResponse(body, 200, ctype, headers)


def _reindexed(kept: list[int], intermediate: Intermediate | None,
               cancelled: Cancelled | None) -> tuple[Intermediate | None, Cancelled | None]:
    """The callbacks of a batch some of whose requests the handler does not see: its
    positions (0..len(kept)-1) translated to and from the batch's."""
    position = {original: k for k, original in enumerate(kept)}
    deliver, gone = None, None
    if intermediate is not None:
        send = intermediate

        def deliver(answers: list[tuple[int, InferenceResponse]]) -> None:
            send([(kept[k], answer) for k, answer in answers])
    if cancelled is not None:
        ask = cancelled

        def gone() -> set[int]:
            return {position[i] for i in ask() if i in position}
    return deliver, gone


def _error_answer(error: ServingError) -> InferenceResponse:
    """One request's error, as a handler's per-request status answers it."""
    return InferenceResponse(error.message.encode("utf-8"), error.code,
                             "text/plain; charset=utf-8", {})


def _http_headers(raw: dict[str, Any]) -> dict[str, str]:
    """The handler's response headers that HTTP can carry: latin-1, no line breaks. Others
    are dropped with a warning rather than failing the answer at the gateway."""
    out: dict[str, str] = {}
    for name, value in raw.items():
        text = str(value)
        try:
            str(name).encode("latin-1")
            text.encode("latin-1")
        except UnicodeEncodeError:
            ok = False
        else:
            ok = not any(c in f"{name}{text}" for c in "\r\n\0") and bool(str(name).strip())
        if ok:
            out[str(name)] = text
        else:
            log.warning("dropping response header %r: not a valid HTTP header", name)
    return out


def _processor(item: WorkItem) -> RequestProcessor:
    # TorchServe's backend exposes each input's content type under the input's name, then
    # the request headers, in one mapping per request.
    headers: dict[str, Any] = {name: {"content-type": ctype} for name, ctype, _ in item.inputs}
    headers.update(item.headers)
    return RequestProcessor(headers)


def decode_value(content_type: str, value: Any, decode: bool = True) -> Any:
    """JSON parsed, `text/*` as str, anything else as bytearray (TorchServe's rules)."""
    raw = bytearray(value)
    if not decode:
        return raw
    if content_type == "application/json":
        try:
            return _json_bytes(raw)
        except Exception:  # not JSON, or nested past the stack (RecursionError): the bytes
            return raw
    if content_type.startswith("text"):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return raw


_JSON_DECODE = json.JSONDecoder().decode


def _json_bytes(raw: bytearray) -> Any:
    """`json.loads(raw)`; bytes that can only be UTF-8 skip its encoding sniffing (no
    UTF-8/16/32 byte-order mark, no NUL among the first two bytes)."""
    if len(raw) >= 2 and raw[0] and raw[1] and raw[0] not in (0xEF, 0xFE, 0xFF):
        return _JSON_DECODE(raw.decode("utf-8", "surrogatepass"))
    return json.loads(raw)


def encode_value(value: Any) -> tuple[bytes, str]:
    """Bytes as is, str as UTF-8, tensors by torch.save, anything else as JSON."""
    if isinstance(value, bytes | bytearray):
        return bytes(value), "application/octet-stream"
    if isinstance(value, str):
        return value.encode("utf-8"), "text/plain; charset=utf-8"
    if isinstance(value, torch.Tensor):
        buf = io.BytesIO()
        torch.save(value, buf)
        return buf.getvalue(), "application/octet-stream"
    # TorchServe's backend pretty-prints with indent=2; clients may compare bodies byte-wise.
    return pretty_json(value).encode("utf-8"), "application/json"


_SCALARS = (str, int, float, bool, type(None))
_QUOTE = json.encoder.encode_basestring_ascii  # json.dumps's own (C) escaping of a str
_INF = float("inf")


def _scalar_json(v: Any) -> str:
    """`json.dumps(v)` for a str, int, float, bool or None, without building an encoder."""
    if isinstance(v, str):
        return _QUOTE(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return int.__repr__(v)
    if v != v:
        return "NaN"
    if v == _INF:
        return "Infinity"
    if v == -_INF:
        return "-Infinity"
    return float.__repr__(v)


def pretty_json(value: Any) -> str:
    """Exactly `json.dumps(value, indent=2)`, faster for the shapes handlers return most.

    With an indent, the json module falls back to its pure-Python encoder (a 384-float
    embedding takes ~150 µs); a flat object or a flat list of scalars is laid out here from
    the C encoder's pieces instead, byte for byte the same.
    """
    if isinstance(value, dict) and value and all(
            type(k) is str and isinstance(v, _SCALARS) for k, v in value.items()):
        items = ",\n  ".join(f"{_QUOTE(k)}: {_scalar_json(v)}" for k, v in value.items())
        return "{\n  " + items + "\n}"
    if isinstance(value, list) and value and all(
            isinstance(v, int | float | bool) or v is None for v in value):
        return "[\n  " + json.dumps(value)[1:-1].replace(", ", ",\n  ") + "\n]"
    return json.dumps(value, indent=2)

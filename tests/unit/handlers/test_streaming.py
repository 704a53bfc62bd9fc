"""Intermediate answers: what TorchServe's own `send_intermediate_predict_response` writes to
`context.cl_socket` is read back, matched to the batch, and stopped when clients go away."""

from __future__ import annotations

import pytest
import ts
from ts.context import Context, RequestProcessor
from ts.handler_utils.utils import send_intermediate_predict_response as send_utils
from ts.protocol.otf_message_handler import (
    create_predict_response,
    send_intermediate_predict_response,
)

from serving.handlers.service import _http_headers
from serving.handlers.streaming import (
    IntermediateSocket,
    StreamCancelled,
    parse_predict_response,
)
from serving.types import InferenceResponse


def context(ids: list[str]) -> Context:
    ctx = Context("m", ".", {}, len(ids), None, ts.__version__)
    ctx.request_ids = dict(enumerate(ids))
    ctx.request_processor = [RequestProcessor({}) for _ in ids]
    return ctx


def test_torchserves_encoding_is_read_back_answer_by_answer():
    ctx = context(["a", "b"])
    ctx.set_response_content_type(1, "text/plain")
    ctx.set_response_status(201, "Created", idx=1)
    data = create_predict_response([{"x": 1}, "tok"], ctx.request_ids, "ok", 200, ctx, True)
    code, message, answers = parse_predict_response(data)
    assert (code, message) == (200, "ok")
    (rid_a, a), (rid_b, b) = answers
    assert rid_a == "a" and a.body == b'{\n  "x": 1\n}' and a.status == 200
    assert a.headers == {"ts_stream_next": "true"} and a.content_type is None and not a.final
    assert rid_b == "b" and b.body == b"tok" and b.status == 201
    assert b.content_type == "text/plain"


def test_a_handler_streams_through_both_of_torchserves_functions():
    ctx = context(["a", "b"])
    got: list[list[tuple[int, InferenceResponse]]] = []
    ctx.cl_socket = IntermediateSocket(["a", "b"], got.append, _http_headers)
    with pytest.warns(PendingDeprecationWarning):  # TorchServe's old spelling still works
        send_intermediate_predict_response(["1", "2"], ctx.request_ids, "m", 200, ctx)
    send_utils(["3"], {0: "b"}, "m", 200, ctx)  # one request of the batch only, by its id
    assert [[(i, r.body) for i, r in batch] for batch in got] == [
        [(0, b"1"), (1, b"2")], [(1, b"3")]]


def test_duplicate_or_unknown_ids_are_dropped_not_guessed():
    ctx = context(["same", "same"])
    got: list[list[tuple[int, InferenceResponse]]] = []
    ctx.cl_socket = IntermediateSocket(["same", "same"], got.append, _http_headers)
    send_utils(["x"], {0: "same"}, "m", 200, ctx)  # which one?
    send_utils(["x"], {0: "other"}, "m", 200, ctx)
    assert got == []
    send_utils(["x", "y"], ctx.request_ids, "m", 200, ctx)
    assert [(i, r.body) for i, r in got[0]] == [(0, b"x"), (1, b"y")]  # the whole batch


def test_an_error_code_becomes_an_error_answer():
    ctx = context(["a"])
    got: list[list[tuple[int, InferenceResponse]]] = []
    ctx.cl_socket = IntermediateSocket(["a"], got.append, _http_headers)
    send_utils(None, ctx.request_ids, "broken", 507, ctx)
    ((index, answer),) = got[0]
    assert index == 0 and answer.status == 507 and b"broken" in answer.body


def test_cancelled_clients_get_nothing_more_and_all_gone_stops_the_handler():
    ctx = context(["a", "b"])
    gone: set[int] = set()
    got: list[list[tuple[int, InferenceResponse]]] = []
    ctx.cl_socket = IntermediateSocket(["a", "b"], got.append, _http_headers, lambda: gone)
    gone.add(0)
    send_utils(["1", "2"], ctx.request_ids, "m", 200, ctx)
    assert [(i, r.body) for i, r in got[0]] == [(1, b"2")]
    gone.add(1)
    with pytest.raises(StreamCancelled):
        send_utils(["3", "4"], ctx.request_ids, "m", 200, ctx)


def test_after_the_batch_nothing_is_delivered():
    ctx = context(["a"])
    got: list[list[tuple[int, InferenceResponse]]] = []
    sock = IntermediateSocket(["a"], got.append, _http_headers)
    ctx.cl_socket = sock
    sock.closed = True  # what HandlerService.predict does when the batch returns
    send_utils(["late"], ctx.request_ids, "m", 200, ctx)
    assert got == []

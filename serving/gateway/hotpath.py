"""`/predictions` and `/explanations` answered inside the HTTP protocol, without ASGI.

Through ASGI, each prediction costs uvicorn a request-response cycle, an event, an asyncio
task, the receive and send messages and their checks, and our app's coroutine frames: ~38%
of the gateway's py-spy samples on a noop request; answering here took 17% off its CPU per
request (docs/hot-path.md). Here the protocol's parser callbacks
hand the request to the data plane directly (`DataPlane.submit`) and the job's answer is
written to the connection from the job's own callbacks: no task, no coroutine.

Only the common case comes here, decided when a request's head is complete; everything else
goes the ASGI way, before anything of it was handled, so it is answered as it always was:
- a method TorchServe does not serve on these paths, a path without a model name or with
  %-escapes;
- a body without Content-Length (chunked) or declared larger than `max_request_size` (413
  from the ASGI path without reading it), `Expect: 100-continue`, an upgrade;
- a request pipelined behind one not answered yet;
- with token authorization on, a request whose key does not pass (401 from the token guard);
- the access log on (then the route is not installed at all).

What the client and the handler see is the same on both paths: the same request id, inputs
and headers, the same answer and error bodies and headers, counted in Requests2XX/4XX/5XX the
same way; a streaming handler's answers go out as one chunked response.
"""

from __future__ import annotations

import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

from serving.errors import InternalError, ServingError, http_status
from serving.gateway.auth import TokenAuthorization, TokenKind
from serving.gateway.guard import first_header
from serving.gateway.inference import HOT_PREFIXES, PREDICTION_METHODS
from serving.gateway.observed import StatusCounts, count_in
from serving.gateway.predictions import decoded_headers, prediction_request, split_target
from serving.gateway.responses import answer_headers, error_body, error_response
from serving.routing.batcher import Job
from serving.routing.dataplane import DataPlane
from serving.types import InferenceResponse

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

_METHODS = frozenset(m.encode() for m in PREDICTION_METHODS)
_RAW_PREFIXES = tuple(p.encode() for p in HOT_PREFIXES)
_LAST_CHUNK = b"0\r\n\r\n"


class HotRoute:
    """What the inference API's protocol needs to answer predictions itself."""

    __slots__ = ("auth", "by_class", "plane")

    def __init__(self, plane: DataPlane, auth: TokenAuthorization | None,
                 by_class: StatusCounts | None) -> None:
        self.plane = plane
        self.auth = auth  # None: token authorization is off
        self.by_class = by_class  # Requests2XX/4XX/5XX; None: metrics are off

    def begin(self, protocol: Any) -> HotCycle | None:
        """At the end of a request's head: the cycle that answers it here, or None when it
        takes the ASGI path. `protocol`: uvicorn's httptools protocol, its head parsed."""
        parser = protocol.parser
        if parser.get_method() not in _METHODS or parser.should_upgrade() or \
                protocol.expect_100_continue:
            return None
        current = protocol.cycle
        if current is not None and not current.response_complete:
            return None  # pipelined: uvicorn queues it behind the one being answered
        raw_path = httptools.parse_url(protocol.url).path
        if not raw_path.startswith(_RAW_PREFIXES) or b"%" in raw_path:
            return None
        try:
            family, model, version, url_path = split_target(raw_path.decode("ascii"))
        except UnicodeDecodeError:
            return None
        if not model:
            return None
        visible = decoded_headers(protocol.headers)
        declared = visible.get("content-length")
        if declared is None or not (declared.isascii() and declared.isdigit()) or \
                int(declared) > self.plane.max_request_size or "transfer-encoding" in visible:
            return None
        if self.auth is not None:
            try:
                # The first Authorization header, as the token guard reads it.
                self.auth.check(TokenKind.INFERENCE,
                                first_header(protocol.headers, b"authorization"))
            except ServingError:
                return None  # the token guard answers it (401), as on every route
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        return HotCycle(self, protocol, model, version, url_path, family == "explanations",
                        visible, keep_alive)


class _NoEvent:
    """uvicorn sets its cycle's `message_event` when the connection goes; nothing waits
    on one here."""

    __slots__ = ()

    def set(self) -> None:
        return None


_NO_EVENT = _NoEvent()


class HotCycle:
    """One prediction request on a connection, from the end of its head to its answer.

    Stands where uvicorn keeps its request-response cycle (`protocol.cycle`), with the
    attributes uvicorn reads there: `response_complete`, `disconnected`, `keep_alive` and
    `message_event`.
    """

    __slots__ = ("_chunks", "_explain", "_job", "_model", "_over", "_protocol", "_route",
                 "_streaming", "_url_path", "_version", "_visible", "disconnected",
                 "keep_alive", "request_id", "response_complete")

    message_event = _NO_EVENT

    def __init__(self, route: HotRoute, protocol: Any, model: str, version: str | None,
                 url_path: str | None, explain: bool, visible: dict[str, str],
                 keep_alive: bool) -> None:
        self._route = route
        self._protocol = protocol
        self._model = model
        self._version = version
        self._url_path = url_path
        self._explain = explain
        self._visible = visible
        self.request_id = route.plane.request_id(visible.get("x-request-id"))
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self._chunks: list[bytes] = []
        self._job: Job | None = None
        self._streaming = False  # the head of a chunked answer went out
        self._over = False  # answered, failed, or the client went away

    # -- the request (parser callbacks) --------------------------------------------------
    def body(self, data: bytes) -> None:
        self._chunks.append(data)

    def complete(self) -> None:
        """The whole request is in: submit it; its job's callbacks answer it."""
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        plane = self._route.plane
        try:
            request, timeout_ms = prediction_request(self.request_id, self._visible, body,
                                                     self._url_path)
            job = plane.submit(self._model, self._version, request, explain=self._explain,
                               timeout_ms=timeout_ms)
        except ServingError as e:
            self._fail(e)
            return
        except Exception as e:  # a bug: answer it as one, and keep the connection
            log.exception("unexpected error on a %s request for %s",
                          "explanation" if self._explain else "prediction", self._model)
            self._fail(InternalError(f"Internal error: {type(e).__name__}"))
            return
        self._job = job
        # The job calls its listener with each intermediate answer and with None once its
        # final answer (or error) is set, as the data plane's ResponseStream relies on too:
        # the answer is written then, without a callback scheduled on the loop.
        job.listener = self._listen
        if job.future.done():  # settled within submit (before anyone listened)
            self._listen(None)

    def client_gone(self) -> None:
        """The connection was lost before the answer: withdraw the work (or drop its answer
        if it runs); the scheduler counts it as a client gone."""
        self.disconnected = True
        if not self._over:
            self._over = True
            self._drop_job()

    # -- the answers (the job's callbacks) ------------------------------------------------
    def _listen(self, answer: InferenceResponse | None) -> None:
        """The job's listener. It runs inside the scheduler's handling of a worker's
        message: nothing may escape from here to there."""
        if self._over:
            return
        try:
            if answer is None:
                assert self._job is not None  # listening to it
                self._done(self._job.future)
            else:
                self._partial(answer)
        except Exception as e:  # a bug: answer it as one rather than never
            log.exception("request %s: writing its answer failed", self.request_id)
            if not self._over:
                self._drop_job()
                self._fail(InternalError(f"Internal error: {type(e).__name__}"))

    def _partial(self, answer: InferenceResponse) -> None:
        """A streaming handler's intermediate answer."""
        try:
            self._route.plane.check_answer_size(answer)
        except ServingError as e:
            self._drop_job()
            self._fail(e)
            return
        if self._streaming:
            self._write(_chunk(answer.body))
            return
        headers = answer_headers(answer, self.request_id, more=True)
        self._streaming = True
        self._count(answer.status)
        head = self._head(http_status(answer.status), headers, chunked=True)
        if head is not None:
            self._write(head + _chunk(answer.body))

    def _done(self, future: Any) -> None:
        if future.cancelled():
            return  # the client went away: nothing to answer
        error = future.exception()
        if error is None:
            answer: InferenceResponse = future.result()
            try:
                self._route.plane.check_answer_size(answer)
            except ServingError as e:
                error = e
            else:
                self._answer(answer)
                return
        if not isinstance(error, ServingError):
            log.error("request %s: %s", self.request_id, error, exc_info=error)
            error = InternalError(f"Internal error: {type(error).__name__}")
        self._fail(error)

    def _answer(self, answer: InferenceResponse) -> None:
        if self._streaming:
            self._write(_chunk(answer.body) + _LAST_CHUNK)
        else:
            headers = answer_headers(answer, self.request_id)
            self._count(answer.status)
            head = self._head(http_status(answer.status), headers)
            if head is None:
                return
            self._write(head + answer.body)
        self._finish()

    def _fail(self, error: ServingError) -> None:
        """Answer with the error; after a streamed answer began, its status cannot change:
        the error's body is the last chunk and the connection is closed without the end of
        the chunked body, so that no client takes the truncated answer for a whole one."""
        if self._streaming:
            log.warning("request %s: the stream failed after it started: %s",
                        self.request_id, error.message)
            self._over = True
            self._release()
            self._write(_chunk(error_body(error)))
            self._protocol.transport.close()
            return
        self._count(error.code)
        status, headers, body = error_response(error, self.request_id)
        head = self._head(status, headers)
        if head is not None:
            self._write(head + body)
            self._finish()

    # -- writing ------------------------------------------------------------------------
    def _head(self, status: int, headers: Headers, chunked: bool = False) -> bytes | None:
        """The status line and headers, as uvicorn writes them: its default headers (date)
        first, `connection: close` when the connection ends after this answer. None: a
        handler's header cannot be written; the connection is closed instead (as uvicorn
        does)."""
        lines = [STATUS_LINE[status]]
        for name, value in self._protocol.server_state.default_headers:
            lines.append(name + b": " + value + b"\r\n")
        for name, value in headers:
            if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                log.error("request %s: the handler's answer has a header that cannot be "
                          "sent (%r); closing the connection", self.request_id, name)
                self._over = True
                self._drop_job()
                self._protocol.transport.close()
                return None
            lines.append(name + b": " + value + b"\r\n")
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _write(self, data: bytes) -> None:
        transport = self._protocol.transport
        if self.disconnected or transport.is_closing():
            return
        transport.write(data)

    def _finish(self) -> None:
        self._over = True
        self.response_complete = True
        self._release()
        protocol = self._protocol
        if not self.keep_alive:
            protocol.transport.close()
        protocol.on_response_complete()

    def _drop_job(self) -> None:
        job = self._job
        self._release()
        if job is not None and not job.future.done():
            job.cancel()

    def _release(self) -> None:
        """Over: let go of the job (and with it the request's body and answer), which an
        idle keep-alive connection would otherwise hold until its next request."""
        job, self._job = self._job, None
        if job is not None:
            job.listener = None
        self._visible = {}

    def _count(self, code: int) -> None:
        if self._route.by_class is not None:
            count_in(self._route.by_class, code)


def _chunk(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body) if body else b""

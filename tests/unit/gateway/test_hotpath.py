"""Which predictions the HTTP protocol answers itself, and how.

A real uvicorn server with the gateway's protocol on a loopback socket, over the real data
plane, scheduler and batcher; a stand-in worker answers when the test says so. The ASGI app
behind the protocol only records what reached it: a request the protocol answers itself must
never get there, and every other request must, untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from serving.errors import WorkerDied
from serving.gateway.auth import TokenAuthorization, TokenKind
from serving.gateway.hotpath import HotRoute
from serving.gateway.httplimits import limited_protocol
from serving.gateway.observed import StatusCounts
from serving.metrics.instruments import CounterChild
from serving.routing.scheduler import Scheduler
from serving.settings import Settings
from serving.types import InferenceRequest
from tests.unit.routing.test_batcher import run
from tests.unit.routing.test_dataplane import StreamingWorker, plane


class Harness:
    def __init__(self, loop: asyncio.AbstractEventLoop, port: int, worker: StreamingWorker,
                 scheduler: Scheduler, reached_asgi: list[tuple[str, str, bytes]],
                 counts: StatusCounts) -> None:
        self.loop = loop
        self.port = port
        self.worker = worker
        self.scheduler = scheduler
        self.reached_asgi = reached_asgi
        self.counts = counts

    async def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setblocking(False)
        return sock

    async def send(self, sock: socket.socket, data: bytes) -> None:
        await self.loop.sock_sendall(sock, data)

    async def read_until(self, sock: socket.socket, end: bytes) -> bytes:
        data = b""
        while not data.endswith(end):
            chunk = await asyncio.wait_for(self.loop.sock_recv(sock, 65536), 10)
            if not chunk:
                break
            data += chunk
        return data

    async def batches(self, n: int) -> None:
        """Wait until the worker holds `n` batches."""
        for _ in range(500):
            if len(self.worker.batches) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the worker got {len(self.worker.batches)} batches, not {n}")


def post(path: str = "/predictions/m", body: bytes = b"{}", headers: str = "",
         version: str = "1.1") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nhost: t\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{headers}\r\n").encode() + body


@contextlib.asynccontextmanager
async def serving(auth: TokenAuthorization | None = None) -> AsyncIterator[Harness]:
    loop = asyncio.get_running_loop()
    data_plane, worker, scheduler = plane()
    counts: StatusCounts = [None, None, CounterChild(), None, CounterChild(), CounterChild()]
    reached: list[tuple[str, str, bytes]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reached.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"asgi"})

    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(
        app, http=limited_protocol(Settings(), HotRoute(data_plane, auth, counts)),
        lifespan="off", log_config=None, access_log=False, interface="asgi3",
        timeout_graceful_shutdown=1))  # a request never answered fails its test, not hangs
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield Harness(loop, listener.getsockname()[1], worker, scheduler, reached, counts)
    finally:
        server.should_exit = True
        await task


@run
async def test_a_prediction_is_answered_without_reaching_the_asgi_app():
    async with serving() as h:
        sock = await h.connect()
        await h.send(sock, post(body=b'{"a": 1}', headers="x-request-id: abc\r\n"))
        await h.batches(1)
        (requests, _, _) = h.worker.batches[0]
        assert requests[0].request_id == "abc"
        assert requests[0].inputs[0].value == b'{"a": 1}'
        assert requests[0].headers["x-request-id"] == "abc"
        h.worker.answer(b"final")
        answer = await h.read_until(sock, b"final")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nx-request-id: abc\r\ncontent-length: 5" in head
        assert b"\r\ndate: " in head and b"connection: close" not in head
        assert body == b"final"
        # Keep-alive: the next request on the same connection is answered the same way.
        await h.send(sock, post(headers="x-request-id: abd\r\n"))
        await h.batches(2)
        h.worker.answer(b"again")
        assert (await h.read_until(sock, b"again")).endswith(b"\r\n\r\nagain")
        sock.close()
        assert h.reached_asgi == []
        assert h.counts[2].value == 2  # type: ignore[union-attr]


@run
async def test_an_answered_request_is_not_held_by_its_idle_connection():
    """The request (its body with it) goes once it is answered, though the connection stays
    open for the next one."""
    def alive() -> list[InferenceRequest]:
        gc.collect()
        return [o for o in gc.get_objects()
                if isinstance(o, InferenceRequest) and o.request_id == "held-1"]

    async with serving() as h:
        sock = await h.connect()
        await h.send(sock, post(body=b"[1]", headers="x-request-id: held-1\r\n"))
        await h.batches(1)
        assert len(alive()) == 1
        h.worker.answer(b"done")
        await h.read_until(sock, b"done")
        h.worker.batches.clear()  # the stand-in worker's own record of it
        assert alive() == []
        sock.close()


FALLBACKS = {
    "chunked body": b"POST /predictions/m HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked"
                    b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "no body": b"GET /predictions/m HTTP/1.1\r\nhost: t\r\n\r\n",
    "expect 100-continue": post(headers="expect: 100-continue\r\n"),
    "OPTIONS": b"OPTIONS /predictions/m HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n",
    "no model name": post("/predictions/"),
    "escaped path": post("/predictions/m%31"),
    "another route": post("/v2/models/m/infer"),
    "over max_request_size": post(body=b"x" * 1001),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_everything_else_reaches_the_asgi_app(case: str):
    async def scenario() -> None:
        async with serving() as h:
            sock = await h.connect()
            await h.send(sock, FALLBACKS[case])
            answer = await h.read_until(sock, b"asgi")
            sock.close()
            assert b"HTTP/1.1 200 OK\r\n" in answer and answer.endswith(b"asgi"), answer
            assert len(h.reached_asgi) == 1
            assert h.worker.batches == []

    asyncio.run(scenario())


@run
async def test_a_request_pipelined_behind_one_not_answered_waits_for_it():
    async with serving() as h:
        sock = await h.connect()
        await h.send(sock, post(headers="x-request-id: one\r\n") + post(body=b"[2]"))
        await h.batches(1)
        await asyncio.sleep(0.05)
        assert h.reached_asgi == []  # the second waits behind the first's answer
        h.worker.answer(b"first")
        answer = await h.read_until(sock, b"asgi")
        sock.close()
        assert answer.index(b"first") < answer.index(b"asgi")
        assert h.reached_asgi == [("POST", "/predictions/m", b"[2]")]


@run
async def test_a_streaming_answer_goes_out_chunked():
    async with serving() as h:
        sock = await h.connect()
        await h.send(sock, post())
        await h.batches(1)
        h.worker.stream(b"ab")
        h.worker.stream(b"c")
        h.worker.answer(b"end")
        answer = await h.read_until(sock, b"0\r\n\r\n")
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"\r\ntransfer-encoding: chunked" in head and b"content-length" not in head
        assert body == b"2\r\nab\r\n1\r\nc\r\n3\r\nend\r\n0\r\n\r\n"


@run
async def test_a_client_that_goes_away_has_its_running_request_withdrawn():
    async with serving() as h:
        sock = await h.connect()
        await h.send(sock, post())
        await h.batches(1)
        sock.close()
        for _ in range(500):
            if h.worker.cancelled:
                break
            await asyncio.sleep(0.01)
        assert h.worker.cancelled == [(1, 0)]
        h.worker.answer(b"late")  # dropped: nobody to answer, nothing raised
        await asyncio.sleep(0.05)


@run
async def test_errors_are_answered_as_torchserve_json():
    async with serving() as h:
        sock = await h.connect()
        await h.send(sock, post("/predictions/nothing", headers="x-request-id: e1\r\n"))
        answer = await h.read_until(sock, b"}\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert b"\r\ncontent-type: application/json\r\nx-request-id: e1\r\n" in head
        assert b'"ModelNotFoundException"' in body
        # A larger answer than max_response_size (100 here): 500, on the same connection.
        await h.send(sock, post())
        await h.batches(1)
        h.worker.answer(b"x" * 101)
        answer = await h.read_until(sock, b"}\n")
        sock.close()
        assert answer.startswith(b"HTTP/1.1 500") and b"max_response_size" in answer
        assert h.counts[4].value == 1 and h.counts[5].value == 1  # type: ignore[union-attr]
        assert h.reached_asgi == []


class DeadConnectionWorker(StreamingWorker):
    """A worker whose connection closed: its batch fails within `run`, as the real worker's
    does (`_fail_inflight`), so the job is settled before `submit` returns."""

    def run(self, requests, done, timeout, partial=None, started=None) -> int:
        token = super().run(requests, done, timeout, partial, started)
        done(WorkerDied("worker 1 connection closed"))
        return token


@run
async def test_a_request_failed_within_submit_is_answered():
    async with serving() as h:
        h.scheduler.remove_worker(h.worker)
        h.scheduler.add_worker(DeadConnectionWorker())
        sock = await h.connect()
        await h.send(sock, post(headers="x-request-id: d1\r\n"))
        answer = await h.read_until(sock, b"}\n")
        sock.close()
        assert answer.startswith(b"HTTP/1.1 502"), answer
        assert b"WorkerDiedException" in answer and b"x-request-id: d1" in answer


@run
async def test_http_1_0_closes_after_the_answer():
    async with serving() as h:
        sock = await h.connect()
        await h.send(sock, post(version="1.0"))
        await h.batches(1)
        h.worker.answer(b"bye")
        answer = await h.read_until(sock, b"never")  # read until the server closes
        sock.close()
        assert b"\r\nconnection: close\r\n" in answer and answer.endswith(b"bye")


def test_with_token_authorization_only_a_good_key_is_answered_here(tmp_path: Path):
    async def scenario() -> None:
        auth = TokenAuthorization(tmp_path / "key_file.json", 60)
        key = auth._keys[TokenKind.INFERENCE].secret.decode()
        async with serving(auth) as h:
            sock = await h.connect()
            await h.send(sock, post(headers="authorization: Bearer wrong\r\n"))
            assert (await h.read_until(sock, b"asgi")).endswith(b"asgi")
            # Two keys: the first counts, as for the token guard (a good second one does
            # not let a bad first one through here).
            await h.send(sock, post(headers="authorization: Bearer wrong\r\n"
                                            f"authorization: Bearer {key}\r\n"))
            assert (await h.read_until(sock, b"asgi")).endswith(b"asgi")
            await h.send(sock, post(headers=f"authorization: Bearer {key}\r\n"))
            await h.batches(1)
            h.worker.answer(b"mine")
            assert (await h.read_until(sock, b"mine")).endswith(b"mine")
            sock.close()
            assert len(h.reached_asgi) == 2

    asyncio.run(scenario())

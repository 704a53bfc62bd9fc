"""Predictions answered inside the HTTP protocol (serving/gateway/hotpath.py) look exactly
like those answered through ASGI: the same request sent both ways gets the same bytes back.

A request with a Content-Length takes the protocol's own path; the same request with a
chunked body (no Content-Length) takes the ASGI path. Raw sockets, so that every byte of the
answer is compared; only the `date` header may differ.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.support.archives import build_mar
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory):
    build_mar(store, "behaviour", "behaviour_handler.py")
    build_mar(store, "stream", "stream_handler.py", config="responseTimeout: 120\n")
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text("max_request_size=4000\nmax_response_size=2000\n"
                   "load_models=behaviour.mar,stream.mar\n")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, model_store=store, ts_config=cfg) as srv:
        srv.wait_ready(models=("behaviour", "stream"))
        yield srv


def exchange(port: int, data: bytes, *, until_close: bool = False) -> bytes:
    """Send `data` on a fresh connection; read one whole answer (or all until the server
    closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
            if not until_close and _complete(received):
                return received


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.lower().split(b"\r\n")
    for line in lines:
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    if b"transfer-encoding: chunked" in lines:
        return body.endswith(b"0\r\n\r\n")
    return False


def without_date(answer: bytes) -> bytes:
    head, _, body = answer.partition(b"\r\n\r\n")
    kept = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def both_ways(path: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """The request with a Content-Length, and the same with a chunked body."""
    head = f"POST {path} HTTP/1.1\r\nhost: t\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items())
    plain = f"{head}content-length: {len(body)}\r\n\r\n".encode() + body
    chunked = (f"{head}transfer-encoding: chunked\r\n\r\n".encode()
               + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n")
    return plain, chunked


ORDERS = {
    "json": ("/predictions/behaviour", {"echo": "hi"}),
    "status_header_type": ("/predictions/behaviour", {
        "status": 207, "headers": {"X-Extra": "1"}, "content_type": "text/x-test",
        "return": "text"}),
    "bytes": ("/predictions/behaviour", {"return": "bytes"}),
    "handler_error": ("/predictions/behaviour", {"raise": "prediction", "code": 503}),
    "handler_bug": ("/predictions/behaviour", {"raise": "value"}),
    "too_large_answer": ("/predictions/behaviour", {"return": "big", "size": 2001}),
    "unknown_model": ("/predictions/nothing", {}),
    "unknown_version": ("/predictions/behaviour/9.9", {}),
    "url_path": ("/predictions/behaviour/1.0/some/where", {"echo": "p"}),
    "explanation": ("/explanations/behaviour", {"echo": "e"}),
    "stream": ("/predictions/stream", {"tokens": 3}),
    "stream_fails": ("/predictions/stream", {"tokens": 3, "fail_after": 1}),
}


@pytest.mark.parametrize("case", sorted(ORDERS))
def test_both_paths_answer_the_same_bytes(server: ServerProcess, case: str):
    path, order = ORDERS[case]
    plain, chunked = both_ways(path, json.dumps(order).encode(),
                               {"content-type": "application/json",
                                "x-request-id": f"same-{case}"})
    ends = case == "stream_fails"  # the connection is closed after a broken stream
    hot = exchange(server.inference_port, plain, until_close=ends)
    asgi = exchange(server.inference_port, chunked, until_close=ends)
    assert hot.startswith(b"HTTP/1.1 "), hot
    assert without_date(hot) == without_date(asgi)
    assert f"x-request-id: same-{case}".encode() in hot


def test_bad_inputs_are_answered_the_same(server: ServerProcess):
    for headers, body in (
            ({"content-type": "application/json", "x-request-timeout-ms": "0"}, b"{}"),
            ({"content-type": "multipart/form-data; boundary=zz"}, b"not a form"),
            ({"content-type": "application/x-www-form-urlencoded"}, b"\xff=\xfe")):
        plain, chunked = both_ways("/predictions/behaviour", body,
                                   {**headers, "x-request-id": "bad-1"})
        hot = exchange(server.inference_port, plain)
        assert hot.startswith(b"HTTP/1.1 400"), hot
        assert without_date(hot) == without_date(exchange(server.inference_port, chunked))


def answers(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """Consecutive answers with a Content-Length: (head, body) each; None while incomplete."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return None
        length = next(int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:"))
        if len(rest) < length:
            return None
        out.append((head, rest[:length]))
        data = rest[length:]
    return out


def test_pipelined_requests_are_answered_in_order(server: ServerProcess):
    """Three requests in one write: the first is answered by the protocol, the two queued
    behind it through ASGI, each after the one before."""
    requests = b"".join(both_ways("/predictions/behaviour", json.dumps({"echo": i}).encode(),
                                  {"x-request-id": f"pipe-{i}"})[0] for i in range(3))
    with socket.create_connection(("127.0.0.1", server.inference_port), timeout=60) as sock:
        sock.sendall(requests)
        received = b""
        while (parsed := answers(received)) is None or len(parsed) < 3:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    assert len(parsed) == 3
    for i, (head, body) in enumerate(parsed):
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert f"\r\nx-request-id: pipe-{i}".encode() in head
        assert json.loads(body)["echo"] == i


def test_http_1_0_gets_connection_close(server: ServerProcess):
    body = b'{"echo": 1}'
    answer = exchange(server.inference_port,
                      b"POST /predictions/behaviour HTTP/1.0\r\ncontent-length: %d\r\n\r\n%s"
                      % (len(body), body), until_close=True)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nconnection: close" in head
    assert json.loads(rest)["echo"] == 1

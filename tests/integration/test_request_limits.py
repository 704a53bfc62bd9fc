"""Hostile requests against a real server: JSON depth, head sizes, multipart bytes, request
ids, KServe v1 instance counts, management bodies; and handlers that try to end their worker."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import httpx
import pytest

from tests.support.archives import build_mar
from tests.support.server import ServerProcess

MODEL = "/predictions/limits"
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory):
    build_mar(store, "limits", "limits_handler.py")
    build_mar(store, "small-queue", "limits_handler.py", config="jobQueueSize: 3\n")
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text("load_models=limits.mar,small-queue.mar\nmax_kserve_instances=5\n")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, model_store=store, ts_config=cfg) as srv:
        srv.wait_ready(models=("limits", "small-queue"))
        yield srv


def worker_pid(server: ServerProcess, model: str = "limits") -> int:
    workers = server.management.get(f"/models/{model}").json()[0]["workers"]
    assert len(workers) == 1 and workers[0]["status"] == "READY"
    return int(workers[0]["pid"])


def assert_served_by(server: ServerProcess, pid: int) -> None:
    """The same worker process is still READY and answers a normal request."""
    r = server.inference.post(MODEL, json={"ok": 1})
    assert r.status_code == 200, r.text
    assert r.json()["pid"] == pid
    assert worker_pid(server) == pid


def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # the server may answer and stop reading before the request is all sent
        with contextlib.suppress(OSError):
            sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_error(r: httpx.Response, code: int, type_name: str, words: str) -> None:
    assert r.status_code == code, r.text
    body = r.json()
    assert body["code"] == code and body["type"] == type_name
    assert words in body["message"], body["message"]
    assert r.headers["x-request-id"]


# --- JSON nesting depth ---------------------------------------------------------------

def test_deep_json_is_400_from_the_gateway_and_the_worker_never_sees_it(server: ServerProcess):
    pid = worker_pid(server)
    log_start = len(server.log())  # the recurse case of another test logs one on purpose
    for path in (MODEL, "/explanations/limits", "/v1/models/limits:predict"):
        r = server.inference.post(path, content=DEEP,
                                  headers={"content-type": "application/json"})
        assert_error(r, 400, "BadRequestException", "max_json_depth")
    assert_served_by(server, pid)
    assert server.management.get("/models/limits").json()[0]["workers"][0]["restarts"] == 0
    assert "RecursionError" not in server.log()[log_start:]


def test_depth_limit_boundary_and_strings_do_not_count(server: ServerProcess):
    at_limit = b"[" * 100 + b"]" * 100
    r = server.inference.post(MODEL, content=at_limit, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["inputs"]["body"]["type"] == "list"
    over = b"[" * 101 + b"]" * 101
    r = server.inference.post(MODEL, content=over, headers={"content-type": "application/json"})
    assert_error(r, 400, "BadRequestException", "101 levels deep")
    # brackets inside strings, escaped quotes included, are text, not nesting
    text = '{"s": "\\"' + "[" * 5000 + '"}'
    r = server.inference.post(MODEL, content=text, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["inputs"]["body"]["value"]["s"].endswith("[[[")


def test_invalid_json_still_reaches_the_handler_as_bytes(server: ServerProcess):
    r = server.inference.post(MODEL, content=b"{not json",
                              headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["inputs"]["body"] == {"type": "bytearray", "hex": b"{not json".hex()}


def test_deep_json_in_a_multipart_part_and_in_management_calls(server: ServerProcess):
    r = server.inference.post(MODEL, files={"data": ("x.json", DEEP, "application/json")})
    assert_error(r, 400, "BadRequestException", "max_json_depth")
    r = server.management.post("/models", content=DEEP,
                               headers={"content-type": "application/json"})
    assert_error(r, 400, "BadRequestException", "max_json_depth")
    r = server.management.post("/models", params={"url": "limits.mar",
                                                  "optimization": "[" * 2000})
    assert_error(r, 400, "BadRequestException", "optimization")


# --- handlers that try to end their worker ----------------------------------------------

@pytest.mark.parametrize("action", ["exit", "recurse", "interrupt"])
def test_a_handler_cannot_end_its_worker(server: ServerProcess, action: str):
    pid = worker_pid(server)
    r = server.inference.post(MODEL, json={"do": action})
    assert_error(r, 503, "InternalServerException", "Prediction failed")
    assert_served_by(server, pid)


# --- request line and header sizes ------------------------------------------------------

def test_huge_header_is_431(server: ServerProcess):
    for port in (server.inference_port, server.management_port):
        status, headers, body = raw(port, b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: "
                                    + b"a" * 1_000_000 + b"\r\n\r\n")
        assert status == 431
        assert headers["content-type"] == "application/json" and headers["x-request-id"]
        assert headers["connection"] == "close"
        assert b'"RequestHeaderFieldsTooLargeException"' in body and b"max_header_size" in body


def test_too_many_headers_is_431(server: ServerProcess):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    status, _, body = raw(server.inference_port, b"POST /predictions/limits HTTP/1.1\r\n"
                          b"Host: x\r\n" + many + b"Content-Length: 2\r\n\r\n{}")
    assert status == 431 and b"max_headers" in body


def test_huge_url_is_414(server: ServerProcess):
    status, _, body = raw(server.inference_port,
                          b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and b'"UriTooLongException"' in body and b"max_request_line" in body


def test_heads_within_the_limits_are_served_on_a_kept_alive_connection(server: ServerProcess):
    with httpx.Client(base_url=f"http://127.0.0.1:{server.inference_port}") as client:
        big = {"x-big": "a" * 60_000, **{f"x-h{i}": "v" for i in range(90)}}
        for _ in range(3):
            r = client.post(MODEL, json={"ok": 1}, headers=big)
            assert r.status_code == 200
        assert client.get("/ping?" + "q" * 8000).status_code == 200


# --- multipart ------------------------------------------------------------------------

def test_multipart_fields_reach_the_handler_as_the_bytes_sent(server: ServerProcess):
    binary = b"\xff\xfe\x00\x80 not utf-8 \xc3"
    # httpx encodes str form values as UTF-8: the body is built here to send raw bytes
    boundary = b"limitsboundary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="field"\r\n\r\n'
            + binary + b"\r\n--" + boundary
            + b'\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG\x00\xff\r\n--" + boundary + b"--\r\n")
    r = server.inference.post(MODEL, content=body, headers={
        "content-type": f"multipart/form-data; boundary={boundary.decode()}"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["inputs"]["field"] == {"type": "bytearray", "hex": binary.hex()}
    assert out["inputs"]["image"] == {"type": "bytearray", "hex": b"\x89PNG\x00\xff".hex()}
    assert out["types"] == {"field": "", "image": "image/png"}
    r = server.inference.post(MODEL, files={"t": ("t.txt", "héllo".encode(), "text/plain")})
    assert r.json()["inputs"]["t"] == {"type": "str", "value": "héllo"}


@pytest.mark.parametrize("body", [
    b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nvalue",  # no closing boundary
    b"--b\r\nContent-Type: text/plain\r\n\r\nvalue\r\n--b--\r\n",  # a part without a name
])
def test_malformed_multipart_is_400(server: ServerProcess, body: bytes):
    r = server.inference.post(MODEL, content=body,
                              headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(r, 400, "BadRequestException", "malformed multipart body")


# --- request ids ----------------------------------------------------------------------

@pytest.mark.parametrize("given", [b"\xc3\xa9t\xc3\xa9", b"a b", b"x" * 201, b"\xff"])
def test_odd_request_ids_are_replaced_everywhere(server: ServerProcess, given: bytes):
    ok = server.inference.post(MODEL, json={}, headers={"x-request-id": given})
    assert ok.status_code == 200
    assigned = ok.headers["x-request-id"]
    assert assigned.encode() != given and assigned.isascii() and len(assigned) == 36
    assert ok.json()["request_id"] == assigned  # the handler sees the same id
    for r in (server.inference.post("/predictions/absent", json={},
                                    headers={"x-request-id": given}),
              server.inference.get("/no/route", headers={"x-request-id": given}),
              server.inference.post("/v1/models/limits:predict", json={"nope": 1},
                                    headers={"x-request-id": given}),
              server.management.get("/models/absent", headers={"x-request-id": given})):
        assert r.status_code in (400, 404), r.text
        assert r.json()["code"] == r.status_code
        assert r.headers["x-request-id"].isascii() and r.headers["x-request-id"].encode() != given
    kserve = server.inference.post("/v1/models/limits:predict", json={"instances": [{}]},
                                   headers={"x-request-id": given})
    rid = kserve.headers["x-request-id"]
    assert kserve.json()["predictions"][0]["request_id"] == f"{rid}:0"


def test_a_sane_request_id_is_kept(server: ServerProcess):
    rid = "client-id_42.~!" + "z" * 185
    r = server.inference.post(MODEL, json={}, headers={"x-request-id": rid})
    assert r.headers["x-request-id"] == rid and r.json()["request_id"] == rid


# --- KServe v1 and management bodies --------------------------------------------------

def test_kserve_instances_are_bounded(server: ServerProcess):
    r = server.inference.post("/v1/models/limits:predict", json={"instances": [{}] * 6})
    assert_error(r, 400, "BadRequestException", "at most 5 are accepted per request "
                                                "(max_kserve_instances)")
    r = server.inference.post("/v1/models/small-queue:predict", json={"instances": [{}] * 4})
    assert_error(r, 400, "BadRequestException", "at most 3")
    assert "job queue" in r.json()["message"]
    r = server.inference.post("/v1/models/limits:predict", json={"instances": [{}] * 5})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 5


def test_big_management_body_is_413(server: ServerProcess):
    big = b'{"url": "' + b"a" * (1 << 20) + b'"}'
    r = server.management.post("/models", content=big,
                               headers={"content-type": "application/json"})
    assert_error(r, 413, "RequestEntityTooLargeException", "max_management_request_size")

    def chunked():
        for _ in range(20):
            yield b" " * 65536

    r = server.management.post("/models", content=chunked())
    assert_error(r, 413, "RequestEntityTooLargeException", "max_management_request_size")
    assert server.management.get("/models").status_code == 200

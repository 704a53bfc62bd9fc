"""The inference API: ping, routes, errors, size limit, request ids, KServe v1."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.archives import build_mar
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def small_limit_server(store: Path, tmp_path_factory: pytest.TempPathFactory):
    build_mar(store, "behaviour", "behaviour_handler.py")
    build_mar(store, "echo", "echo_handler.py")
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text("max_request_size=1000\nmax_response_size=2000\n"
                   "load_models=behaviour.mar,echo.mar\n")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, model_store=store, ts_config=cfg) as srv:
        srv.wait_ready(models=("behaviour", "echo"))
        yield srv


def test_ping(small_limit_server: ServerProcess):
    r = small_limit_server.inference.get("/ping")
    assert r.status_code == 200 and r.json() == {"status": "Healthy"}
    assert r.headers["x-request-id"]


def test_unknown_model_version_and_route(small_limit_server: ServerProcess):
    srv = small_limit_server
    r = srv.inference.post("/predictions/missing", json={})
    assert r.status_code == 404
    assert r.json() == {"code": 404, "type": "ModelNotFoundException",
                        "message": "Model not found: missing"}
    assert r.headers["x-request-id"]
    r = srv.inference.post("/predictions/behaviour/7.0", json={})
    assert r.status_code == 404 and r.json()["type"] == "ModelVersionNotFoundException"
    r = srv.inference.get("/no/such/route")
    assert r.status_code == 404 and r.json()["code"] == 404 and r.headers["x-request-id"]
    r = srv.inference.request("TRACE", "/predictions/behaviour")
    assert r.status_code == 405 and r.json()["code"] == 405 and "GET" in r.headers["allow"]


def test_request_ids_are_unique_or_the_clients(small_limit_server: ServerProcess):
    srv = small_limit_server
    ids = {srv.inference.post("/predictions/behaviour", json={}).headers["x-request-id"]
           for _ in range(5)}
    assert len(ids) == 5
    r = srv.inference.post("/predictions/behaviour", json={}, headers={"x-request-id": "abc-1"})
    assert r.headers["x-request-id"] == "abc-1"


def test_max_request_size_is_413(small_limit_server: ServerProcess):
    srv = small_limit_server
    r = srv.inference.post("/predictions/echo", content=b"x" * 1001,
                           headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413
    assert r.json()["code"] == 413 and "max_request_size" in r.json()["message"]

    def chunked():
        for _ in range(20):
            yield b"y" * 100

    r = srv.inference.post("/predictions/echo", content=chunked(),
                           headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413
    ok = srv.inference.post("/predictions/echo", content=b"x" * 1000,
                            headers={"content-type": "application/octet-stream"})
    assert ok.status_code == 200 and ok.json()["inputs"]["body"]["value"] == 1000


def test_max_response_size_is_enforced(small_limit_server: ServerProcess):
    srv = small_limit_server
    ok = srv.inference.post("/predictions/behaviour", json={"return": "big", "size": 2000})
    assert ok.status_code == 200 and len(ok.content) == 2000
    r = srv.inference.post("/predictions/behaviour", json={"return": "big", "size": 2001})
    assert r.status_code == 500 and "max_response_size" in r.json()["message"]


def test_kserve_v1_predict(small_limit_server: ServerProcess):
    r = small_limit_server.inference.post(
        "/v1/models/echo:predict", json={"instances": [{"x": 1}, [1, 2]]})
    assert r.status_code == 200
    predictions = r.json()["predictions"]
    assert [p["inputs"]["data"]["value"] for p in predictions] == [{"x": 1}, [1, 2]]
    r = small_limit_server.inference.post("/v1/models/echo:predict", json={"nope": []})
    assert r.status_code == 400 and "instances" in r.json()["message"]
    r = small_limit_server.inference.post("/v1/models/absent:predict", json={"instances": [1]})
    assert r.status_code == 404


def test_malformed_multipart_is_400(small_limit_server: ServerProcess):
    r = small_limit_server.inference.post(
        "/predictions/echo", content=b"--zzz\r\nnot a part",
        headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert r.status_code == 400
    assert r.json()["type"] == "BadRequestException"
    assert "malformed multipart body" in r.json()["message"]


def test_model_api_disabled_by_default(store: Path, tmp_path: Path):
    with ServerProcess(tmp_path / "log", model_store=store, enable_model_api=False) as srv:
        srv.wait_ready()
        r = srv.management.post("/models", params={"url": "echo.mar"})
        assert r.status_code == 405 and r.json()["type"] == "MethodNotAllowedException"
        assert srv.management.get("/models").json() == {"models": []}


def client_address(r: httpx.Response) -> object:
    """The local address of the connection that carried `r`; "closed" when the server has
    already closed it (the socket then has no address left to read)."""
    try:
        return r.extensions["network_stream"].get_extra_info("client_addr")
    except OSError:
        return "closed"


def test_keep_alive_connection_serves_many_requests(small_limit_server: ServerProcess):
    """Twenty answers, errors among them, on one TCP connection: httpx would silently open a
    new connection if the server closed one, so the test compares the client's local
    address of every exchange, and the server must never have said `Connection: close`."""
    sockets: set[object] = set()
    bodies: list[object] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{small_limit_server.inference_port}") as c:
        for i in range(20):
            r = (c.post("/predictions/missing", json={}) if i % 5 == 4
                 else c.post("/predictions/behaviour", json={"echo": i}))
            assert r.headers.get("connection", "").lower() != "close"
            sockets.add(client_address(r))
            bodies.append(r.json().get("echo", r.status_code))
    assert bodies == [404 if i % 5 == 4 else i for i in range(20)]
    assert len(sockets) == 1 and not sockets & {None, "closed"}, sockets

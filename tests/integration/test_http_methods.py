"""HTTP methods as TorchServe 0.12 routes them: every method but OPTIONS reaches the handler on
/predictions, /explanations and KServe v1 (its docs use `curl -T`, a PUT); 405 with TorchServe's
error body and an `Allow` header where TorchServe answers 405."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.archives import build_mar
from tests.support.server import ServerProcess

BODY_METHODS = ("POST", "PUT", "GET", "DELETE", "PATCH")


@pytest.fixture(scope="module")
def echo_server(store: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:
    build_mar(store, "echo", "echo_handler.py")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, "--models", "echo=echo.mar", model_store=store) as srv:
        srv.wait_ready(models=("echo",))
        yield srv


def _seen(response: httpx.Response) -> dict[str, object]:
    """What the handler saw of a request, without the parts that differ per request."""
    assert response.status_code == 200, response.text
    seen = dict(response.json())
    seen.pop("request_id")
    return seen


@pytest.mark.parametrize("method", BODY_METHODS)
@pytest.mark.parametrize(("content", "content_type"), [
    (b'{"x": [1, 2]}', "application/json"),
    (b"some text", "text/plain"),
    (bytes(range(256)), "application/octet-stream"),
])
def test_every_method_torchserve_routes_gives_the_handler_what_post_gives(
        echo_server: ServerProcess, method: str, content: bytes, content_type: str) -> None:
    headers = {"content-type": content_type, "x-test": method}
    post = _seen(echo_server.inference.post("/predictions/echo", content=content,
                                            headers=headers))
    other = _seen(echo_server.inference.request(method, "/predictions/echo", content=content,
                                                headers=headers))
    assert other == post


def test_put_reaches_versions_explanations_and_url_paths(echo_server: ServerProcess) -> None:
    srv = echo_server
    seen = _seen(srv.inference.put("/predictions/echo/1.0/a/b", json={"k": 1}))
    assert seen["inputs"] == {"body": {"type": "dict", "value": {"k": 1}}}
    assert seen["url_path"] == "a/b" and seen["explain"] != "True"
    explained = _seen(srv.inference.put("/explanations/echo", content=b"why"))
    assert explained["explain"] == "True"
    assert explained["inputs"] == {"body": {"type": "bytearray", "value": 3}}
    missing = srv.inference.put("/predictions/echo/9.9", content=b"x")
    assert missing.status_code == 404
    assert missing.json()["type"] == "ModelVersionNotFoundException"


def test_kserve_v1_predict_accepts_put(echo_server: ServerProcess) -> None:
    r = echo_server.inference.put("/v1/models/echo:predict", json={"instances": [{"a": 1}, 2]})
    assert r.status_code == 200, r.text
    assert [p["inputs"]["data"]["value"] for p in r.json()["predictions"]] == [{"a": 1}, 2]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_upload_file_as_torchserve_docs_show(echo_server: ServerProcess,
                                                  tmp_path: Path) -> None:
    image = tmp_path / "kitten.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0" + bytes(5000))
    url = f"http://127.0.0.1:{echo_server.inference_port}/predictions/echo"
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code} %{method}", url, "-T",
                          str(image)], capture_output=True, text=True, timeout=60, check=True)
    body, _, status = out.stdout.rpartition("\n")
    assert status == "200 PUT", out.stdout
    assert json.loads(body)["inputs"] == {"body": {"type": "bytearray", "value": 5004}}


def _is_405(r: httpx.Response, allow: set[str], body: bool = True) -> None:
    assert r.status_code == 405, r.text
    assert {m.strip() for m in r.headers["allow"].split(",")} == allow
    assert r.headers["x-request-id"]
    if body:
        answer = r.json()
        assert answer["code"] == 405 and answer["type"] == "MethodNotAllowedException"
        assert answer["message"]


PREDICT_ALLOW = {"DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT"}


def test_methods_without_a_body_are_405_on_predictions(echo_server: ServerProcess) -> None:
    for path in ("/predictions/echo", "/predictions/echo/1.0", "/explanations/echo"):
        _is_405(echo_server.inference.request("TRACE", path), PREDICT_ALLOW)
        _is_405(echo_server.inference.head(path), PREDICT_ALLOW, body=False)
    message = echo_server.inference.request("TRACE", "/predictions/echo").json()["message"]
    assert "TRACE is not allowed on /predictions/echo" in message


def test_options_describes_the_models_predictions(echo_server: ServerProcess) -> None:
    r = echo_server.inference.options("/predictions/echo")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["openapi"] == "3.0.1"
    assert set(doc["paths"]) == {"/predictions/{model_name}",
                                 "/predictions/{model_name}/{model_version}"}
    explain = echo_server.inference.options("/explanations/echo/1.0").json()
    assert all(p.startswith("/explanations/") for p in explain["paths"])
    for path in ("/predictions/absent", "/predictions/echo/9.9"):
        missing = echo_server.inference.options(path)
        assert missing.status_code == 404 and missing.json()["code"] == 404


def test_options_describes_the_model_on_kserve_v1(echo_server: ServerProcess) -> None:
    r = echo_server.inference.options("/v1/models/echo:predict")
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"]
    doc = r.json()
    assert doc["openapi"] == "3.0.1"
    assert set(doc["paths"]) == {"/predictions/{model_name}",
                                 "/predictions/{model_name}/{model_version}"}
    missing = echo_server.inference.options("/v1/models/absent:predict")
    assert missing.status_code == 404
    assert missing.json()["type"] == "ModelNotFoundException"
    for method in ("HEAD", "TRACE"):
        _is_405(echo_server.inference.request(method, "/v1/models/echo:predict"),
                PREDICT_ALLOW, body=method != "HEAD")


MODEL_PATHS = {"/models/{model_name}", "/models/{model_name}/{model_version}",
               "/models/{model_name}/{model_version}/set-default"}


@pytest.mark.parametrize("path", ["/models/echo", "/models/echo/1.0",
                                  "/models/echo/1.0/set-default"])
def test_options_describes_the_models_management(echo_server: ServerProcess,
                                                 path: str) -> None:
    r = echo_server.management.options(path)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["openapi"] == "3.0.1"
    assert set(doc["paths"]) == MODEL_PATHS
    assert set(doc["paths"]["/models/{model_name}"]) == {"get", "put", "delete"}


@pytest.mark.parametrize(("path", "kind"), [
    ("/models/absent", "ModelNotFoundException"),
    ("/models/echo/9.9", "ModelVersionNotFoundException"),
    ("/models/echo/9.9/set-default", "ModelVersionNotFoundException"),
])
def test_options_on_an_unknown_model_is_404(echo_server: ServerProcess, path: str,
                                            kind: str) -> None:
    r = echo_server.management.options(path)
    assert r.status_code == 404, r.text
    assert r.json()["type"] == kind


def test_options_on_the_model_list_is_405_as_torchserve(echo_server: ServerProcess) -> None:
    _is_405(echo_server.management.options("/models"), {"GET", "POST"})


def test_no_model_name_is_404_not_405(echo_server: ServerProcess) -> None:
    for method in ("POST", "PUT", "TRACE"):
        r = echo_server.inference.request(method, "/predictions/")
        assert r.status_code == 404, r.text
        assert r.json()["type"] == "ResourceNotFoundException"


def test_ping_answers_any_method_torchserve_answers(echo_server: ServerProcess) -> None:
    for method in ("GET", "POST", "PUT"):
        r = echo_server.inference.request(method, "/ping")
        assert r.status_code == 200 and r.json() == {"status": "Healthy"}, method


def test_root_answers_options_only_on_both_apis(echo_server: ServerProcess) -> None:
    for client in (echo_server.inference, echo_server.management):
        described = client.options("/")
        assert described.status_code == 200
        assert described.json()["openapi"] == "3.0.1"
        assert described.json()["paths"] == client.get("/openapi.json").json()["paths"]
        for method in ("GET", "POST", "DELETE"):
            _is_405(client.request(method, "/"), {"OPTIONS"})


def test_oip_405_names_its_method(echo_server: ServerProcess) -> None:
    for method, path, allow in (("GET", "/v2/models/echo/infer", "POST"),
                                ("PUT", "/v2/models/echo/infer", "POST"),
                                ("POST", "/v2/health/live", "GET")):
        r = echo_server.inference.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allow, (method, path)
        assert "error" in r.json()  # OIP's own error shape


def test_metrics_405_names_its_methods(echo_server: ServerProcess) -> None:
    r = echo_server.metrics.post("/metrics")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json()["type"] == "MethodNotAllowedException"
    assert echo_server.metrics.head("/metrics").status_code == 200


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/models", {"GET", "POST"}),
    ("DELETE", "/models", {"GET", "POST"}),
    ("POST", "/models/echo", {"DELETE", "GET", "OPTIONS", "PUT"}),
    ("PATCH", "/models/echo/1.0", {"DELETE", "GET", "OPTIONS", "PUT"}),
    ("GET", "/models/echo/1.0/set-default", {"OPTIONS", "PUT"}),
    ("POST", "/models/echo/1.0/set-default", {"OPTIONS", "PUT"}),
])
def test_management_405s_name_every_allowed_method(echo_server: ServerProcess, method: str,
                                                   path: str, allow: set[str]) -> None:
    r = echo_server.management.request(method, path)
    _is_405(r, allow)
    assert f"{method} is not allowed on {path}" in r.json()["message"]
    # The refused call changed nothing.
    assert echo_server.management.get("/models/echo").status_code == 200

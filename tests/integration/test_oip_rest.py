"""Open Inference Protocol v2 over REST: tritonclient.http unchanged, curl, and every error,
against a real server with archives built by the real torch-model-archiver."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.archives import build_mar
from tests.support.oip_models import build_oip_models
from tests.support.polling import wait_queued
from tests.support.server import ServerProcess

BATCHED = "batchSize: 4\nmaxBatchDelay: 3000\nmode: batch\n"
QUEUE = "batchSize: 1\njobQueueSize: 1\nmaxInflightBatches: 1\n"


@pytest.fixture(scope="module")
def oip_server(store: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ServerProcess]:
    build_oip_models(store)
    build_mar(store, "batched", "oip_handler.py", config=BATCHED)
    build_mar(store, "slow", "slow_handler.py", config=QUEUE)
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, "--models", "all", model_store=store) as srv:
        srv.wait_ready(models=("double", "upper", "v2sum", "wrong", "batched", "slow"))
        yield srv


@pytest.fixture(scope="module")
def client(oip_server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(f"127.0.0.1:{oip_server.inference_port}",
                                     network_timeout=120)
    yield c
    c.close()


def _input(name: str, array: np.ndarray[Any, Any], datatype: str,
           binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "serving"
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready("double")
    assert client.is_model_ready("double", "1.0")
    assert not client.is_model_ready("double", "9.9")
    assert not client.is_model_ready("missing")


def test_model_metadata_declared_and_not(client: triton.InferenceServerClient) -> None:
    assert client.get_model_metadata("double", "1.0") == {
        "name": "double", "versions": ["1.0"], "platform": "pytorch_torchserve",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}
    undeclared = client.get_model_metadata("v2sum")
    assert undeclared["versions"] == ["1.0"]
    assert undeclared["inputs"] == [] and undeclared["outputs"] == []
    with pytest.raises(InferenceServerException, match="Model not found: missing"):
        client.get_model_metadata("missing")


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_infer_fp32_json_and_binary(client: triton.InferenceServerClient, binary_in: bool,
                                    binary_out: bool) -> None:
    x = np.array([1.5, -2.0, 3.25, 1e6], dtype=np.float32)
    result = client.infer("double", [_input("x", x, "FP32", binary_in)],
                          outputs=[triton.InferRequestedOutput("y", binary_data=binary_out)],
                          request_id="my-id")
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    response = result.get_response()
    assert response["model_name"] == "double" and response["model_version"] == "1.0"
    assert response["id"] == "my-id"
    # With no outputs named, tritonclient asks for all of them in binary.
    np.testing.assert_array_equal(
        client.infer("double", [_input("x", x, "FP32", binary_in)]).as_numpy("y"), 2 * x)


@pytest.mark.parametrize("binary", [False, True])
def test_infer_bytes(client: triton.InferenceServerClient, binary: bool) -> None:
    text = np.array([b"hello", "w\u00f6rld".encode(), b""], dtype=object)
    result = client.infer("upper", [_input("text", text, "BYTES", binary)],
                          outputs=[triton.InferRequestedOutput("upper", binary_data=binary)])
    # tritonclient gives JSON BYTES back as str, binary ones as bytes.
    got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("upper").tolist()]
    assert got == ["HELLO", "W\u00d6RLD", ""]


def test_a_v2_answer_passes_through(client: triton.InferenceServerClient) -> None:
    a = np.array([[1, 2], [3, 4]], dtype=np.int32)
    b = np.array([0.5], dtype=np.float64)
    result = client.infer("v2sum", [_input("a", a, "INT32", True), _input("b", b, "FP64", False)])
    assert result.as_numpy("sum").tolist() == [10.0]
    assert result.as_numpy("names").tolist() == [b"a", b"b"]


def test_curl_json_infer(oip_server: ServerProcess) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    done = subprocess.run(
        [curl, "-sS", "-X", "POST", "-H", "content-type: application/json", "-d",
         json.dumps(body), "-w", "\n%{http_code}",
         f"http://127.0.0.1:{oip_server.inference_port}/v2/models/double/infer"],
        capture_output=True, text=True, check=True, timeout=60)
    text, status = done.stdout.rsplit("\n", 1)
    assert status == "200"
    answer = json.loads(text)
    assert answer["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [4],
                                  "data": [2.0, 4.0, 6.0, 8.0]}]


def _post(server: ServerProcess, path: str, body: Any,
          headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return server.inference.post(path, content=content, headers=headers or {})


def _x(data: Any, shape: list[int], datatype: str = "FP32", name: str = "x") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v2/models/missing/infer", _x([1], [1]), 404, "Model not found: missing"),
    ("/v2/models/double/versions/7/infer", _x([1], [1]), 404,
     "Model version: 7 does not exist for model: double"),
    ("/v2/models/double/infer", _x([1], [1], "FP64"), 400,
     "datatype FP64 does not match the model's FP32"),
    ("/v2/models/double/infer", _x([1], [1], "FLOAT"), 400, "unknown datatype 'FLOAT'"),
    ("/v2/models/double/infer", _x([[1, 2]], [1, 2]), 400,
     r"shape [1, 2] does not match the model's [-1]"),
    ("/v2/models/double/infer", _x([1, 2, 3], [2]), 400, "data has more than the 2 elements"),
    ("/v2/models/double/infer", _x([1], [1], name="z"), 400,
     "input 'z': unknown; the model's inputs are x"),
    ("/v2/models/double/infer", _x(["a"], [1]), 400, "FP32 data must be numbers"),
    ("/v2/models/double/infer", b"{not json", 400, "header is not valid JSON"),
    ("/v2/models/double/infer", {**_x([1], [1]), "outputs": [{"name": "q"}]}, 400,
     "output 'q': unknown"),
    ("/v2/models/wrong/infer", _x([1], [1]), 500, "do not fit the declared shape [4]"),
])
def test_errors_are_json_with_the_right_status(oip_server: ServerProcess, path: str,
                                               body: Any, status: int, message: str) -> None:
    r = _post(oip_server, path, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]
    assert set(r.json()) == {"error"}


def test_binary_size_mismatch_and_header_length(oip_server: ServerProcess) -> None:
    header = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    ok = _post(oip_server, "/v2/models/double/infer",
               header + np.array([1, 2], dtype="<f4").tobytes(),
               {"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [2.0, 4.0]
    short = _post(oip_server, "/v2/models/double/infer", header + b"\0" * 4,
                  {"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "runs past" in short.json()["error"]
    bad = _post(oip_server, "/v2/models/double/infer", header,
                {"Inference-Header-Content-Length": "99999"})
    assert bad.status_code == 400 and "Inference-Header-Content-Length" in bad.json()["error"]


def test_too_large_is_413(oip_server: ServerProcess) -> None:
    body = b"{" + b" " * 7_000_000 + b"}"
    r = _post(oip_server, "/v2/models/double/infer", body)
    assert r.status_code == 413 and "max_request_size" in r.json()["error"]


def test_unknown_routes_and_methods(oip_server: ServerProcess) -> None:
    assert oip_server.inference.get("/v2/models/double/infer").status_code == 405
    assert oip_server.inference.post("/v2/health/live").status_code == 405
    r = oip_server.inference.get("/v2/nothing/here")
    assert r.status_code == 404 and "not found" in r.json()["error"]


def test_full_queue_is_503(oip_server: ServerProcess) -> None:
    """OIP and /predictions requests share the model's queue; beyond it, 503 at once."""
    base = f"http://127.0.0.1:{oip_server.inference_port}"

    async def scenario() -> tuple[int, dict[str, Any], str | None, list[int]]:
        async with aiohttp.ClientSession() as s:
            async def slow(tag: str) -> int:
                async with s.post(f"{base}/predictions/slow",
                                  json={"sleep": 3, "tag": tag}) as r:
                    await r.read()
                    return r.status
            busy = asyncio.create_task(slow("busy"))
            await asyncio.to_thread(wait_queued, oip_server, "slow", 0)  # the worker has it
            queued = asyncio.create_task(slow("queued"))
            await asyncio.to_thread(wait_queued, oip_server, "slow", 1)  # the queue is full
            async with s.post(f"{base}/v2/models/slow/infer",
                              json=_x([1], [1])) as r:
                rejected = (r.status, await r.json(), r.headers.get("Retry-After"))
            rest = await asyncio.gather(busy, queued)
        return rejected[0], rejected[1], rejected[2], list(rest)

    status, body, retry_after, rest = asyncio.run(scenario())
    assert status == 503 and retry_after == "1"
    assert "queue is full" in body["error"]
    assert rest == [200, 200]


def test_oip_requests_batch_with_each_other_and_predictions(oip_server: ServerProcess
                                                            ) -> None:
    base = f"http://127.0.0.1:{oip_server.inference_port}"

    async def scenario() -> list[Any]:
        async with aiohttp.ClientSession() as s:
            async def oip() -> Any:
                async with s.post(f"{base}/v2/models/batched/infer", json=_x([1], [1])) as r:
                    assert r.status == 200, await r.text()
                    answer = await r.json()
                    return json.loads(answer["outputs"][0]["data"][0])

            async def predictions() -> Any:
                async with s.post(f"{base}/predictions/batched", json={}) as r:
                    return await r.json()
            return list(await asyncio.gather(oip(), oip(), oip(), predictions()))

    answers = asyncio.run(scenario())
    assert [a["batch"] for a in answers] == [4, 4, 4, 4]
    assert [a["kind"] for a in answers] == ["oip", "oip", "oip", "predictions"]


def test_bad_oip_block_fails_registration(oip_server: ServerProcess, store: Path) -> None:
    build_mar(store, "badoip", "oip_handler.py",
              config="oip:\n  inputs: [{name: x, datatype: FP33, shape: [1]}]\n")
    r = oip_server.management.post("/models", params={"url": "badoip.mar"})
    assert r.status_code == 400
    assert "oip.inputs.0.datatype: unknown datatype 'FP33'" in r.json()["message"]
    assert oip_server.inference.get("/v2/models/badoip").status_code == 404


def test_token_authorization_applies(store: Path, tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "server.log", model_store=store,
                       token_auth=True) as srv:
        srv.wait_ready()
        assert srv.inference.get("/v2/health/ready").status_code == 401
        url = f"127.0.0.1:{srv.inference_port}"
        with triton.InferenceServerClient(url) as c:
            assert not c.is_server_ready()
            assert c.is_server_ready(headers=srv.bearer("inference"))


@pytest.fixture(scope="module")
def default_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shipped minilm and resnet50 archives, built by model_store.build."""
    from model_store.build import build_all

    store = tmp_path_factory.mktemp("default-store")
    build_all(store, only=["minilm", "resnet50"])
    log = tmp_path_factory.mktemp("logs") / "default.log"
    with ServerProcess(log, "--models", "all", model_store=store) as srv:
        srv.wait_ready(models=("minilm", "resnet50"), timeout=600)
        yield srv


@pytest.mark.slow
def test_minilm_over_oip_gives_the_predictions_embedding(default_models: ServerProcess
                                                         ) -> None:
    sentence = "A man is playing a guitar."
    reference = default_models.inference.post(
        "/predictions/minilm", content=sentence.encode(),
        headers={"content-type": "text/plain"})
    assert reference.status_code == 200, reference.text
    expected = np.array(reference.json(), dtype=np.float32)
    with triton.InferenceServerClient(f"127.0.0.1:{default_models.inference_port}",
                                      network_timeout=120) as c:
        metadata = c.get_model_metadata("minilm")
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [1]}]
        assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32",
                                        "shape": [384]}]
        for binary in (False, True):
            text = _input("text", np.array([sentence.encode()], dtype=object), "BYTES", binary)
            result = c.infer("minilm", [text],
                             outputs=[triton.InferRequestedOutput("embedding", binary)])
            embedding = result.as_numpy("embedding")
            assert embedding.shape == (384,) and embedding.dtype == np.float32
            np.testing.assert_allclose(embedding, expected, rtol=0, atol=1e-6)
            assert abs(float(np.linalg.norm(embedding)) - 1.0) < 1e-4


@pytest.mark.slow
def test_resnet50_over_oip_gives_probabilities(default_models: ServerProcess) -> None:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 224, 224)).astype(np.float32)
    top5 = default_models.inference.post(
        "/predictions/resnet50", content=image.tobytes(),
        headers={"content-type": "application/octet-stream"})
    assert top5.status_code == 200, top5.text
    with triton.InferenceServerClient(f"127.0.0.1:{default_models.inference_port}",
                                      network_timeout=120) as c:
        result = c.infer("resnet50", [_input("input", image, "FP32", True)])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1000,) and probabilities.dtype == np.float32
    assert abs(float(probabilities.sum()) - 1.0) < 1e-3
    best = np.argsort(probabilities)[::-1][:5]
    expected = top5.json()
    assert [str(i) for i in best] == list(expected)
    np.testing.assert_allclose(probabilities[best], list(expected.values()), rtol=1e-4)
    wrong = default_models.inference.post("/v2/models/resnet50/infer", json=_x(
        [0.0] * 12, [3, 2, 2], name="input"))
    assert wrong.status_code == 400
    assert "shape [3, 2, 2] does not match the model's [3, 224, 224]" in wrong.json()["error"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client: triton.InferenceServerClient, algorithm: str) -> None:
    x = np.arange(6, dtype=np.float32)
    result = client.infer("double", [_input("x", x, "FP32", True)],
                          request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)


def test_a_compressed_body_past_the_limit_is_413(oip_server: ServerProcess) -> None:
    import gzip

    bomb = gzip.compress(b" " * 8_000_000)  # ~8 kB that inflate past max_request_size
    r = _post(oip_server, "/v2/models/double/infer", bomb, {"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "Decompressed" in r.json()["error"]
    r = _post(oip_server, "/v2/models/double/infer", b"not gzip", {"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "cannot be decompressed" in r.json()["error"]
    r = _post(oip_server, "/v2/models/double/infer", b"{}", {"Content-Encoding": "br"})
    assert r.status_code == 400 and "not supported" in r.json()["error"]

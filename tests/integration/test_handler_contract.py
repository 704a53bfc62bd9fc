"""TorchServe's handler contract, through real archives on a real server."""

from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import pytest
import torch

from tests.support.archives import HANDLERS, build_mar
from tests.support.server import ServerProcess


def register(server: ServerProcess, url: str, **params: object) -> dict:
    r = server.management.post("/models", params={"url": url, **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_eager_model_file_and_state_dict(server: ServerProcess, store: Path, tmp_path: Path):
    torch.manual_seed(1)
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_linear", HANDLERS / "tiny_linear.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TinyLinear()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    build_mar(store, "eager", "tensor_handler.py", serialized_file=tmp_path / "weights.pt",
              model_file=HANDLERS / "tiny_linear.py")
    register(server, "eager.mar")
    x = [[1.0, 2.0, 3.0]]
    r = server.inference.post("/predictions/eager", json=x[0])
    assert r.status_code == 200, r.text
    expected = model(torch.tensor(x)).tolist()[0]
    assert r.json() == pytest.approx(expected, abs=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_model(server: ServerProcess, store: Path, tmp_path: Path):
    torch.manual_seed(2)
    lin = torch.nn.Linear(3, 2)
    scripted = torch.jit.script(lin)
    scripted.save(str(tmp_path / "model.pt"))
    # A subclass that only adds preprocessing: BaseHandler loads the TorchScript file itself.
    build_mar(store, "scripted", "tensor_handler.py", serialized_file=tmp_path / "model.pt")
    register(server, "scripted.mar")
    r = server.inference.post("/predictions/scripted", json=[0.5, -1.0, 2.0])
    assert r.status_code == 200, r.text
    assert r.json() == pytest.approx(lin(torch.tensor([[0.5, -1.0, 2.0]])).tolist()[0], abs=1e-5)

    # The built-in base_handler loads the same file; its default preprocess cannot turn a
    # request dict into a tensor, and TorchServe answers that with 503 "Prediction failed".
    build_mar(store, "scripted-builtin", "base_handler", serialized_file=tmp_path / "model.pt")
    register(server, "scripted-builtin.mar")
    described = server.management.get("/models/scripted-builtin").json()[0]
    assert described["handler"] == "base_handler"
    assert [w["status"] for w in described["workers"]] == ["READY"]
    r = server.inference.post("/predictions/scripted-builtin", json=[0.5, -1.0, 2.0])
    assert r.status_code == 503
    assert r.json() == {"code": 503, "type": "InternalServerException",
                        "message": "Prediction failed"}


def test_function_handlers(server: ServerProcess, store: Path):
    build_mar(store, "fn", "fn_handler.py")
    register(server, "fn.mar")
    body = server.inference.post("/predictions/fn", content=b"x").json()
    assert body == {"form": "handle", "init_calls": 1, "model": "fn"}

    build_mar(store, "fn-predict", "fn_handler.py")
    register(server, "fn-predict.mar", handler="fn_handler:predict")
    body = server.inference.post("/predictions/fn-predict", content=b"x").json()
    assert body == {"form": "predict", "init_calls": 1}


@pytest.fixture(scope="module")
def behaviour(server: ServerProcess, store: Path) -> str:
    build_mar(store, "behaviour", "behaviour_handler.py")
    register(server, "behaviour.mar")
    return "/predictions/behaviour"


def test_per_item_status_content_type_and_headers(server: ServerProcess, behaviour: str):
    r = server.inference.post(behaviour, json={
        "status": 418, "content_type": "text/csv", "headers": {"x-model-says": "hello"},
        "return": "text"})
    assert r.status_code == 418
    assert r.headers["content-type"] == "text/csv"
    assert r.headers["x-model-says"] == "hello"
    assert r.text == "item 0 of 1"
    assert r.headers["x-request-id"]


def test_per_item_settings_stay_with_their_item_in_a_batch(server: ServerProcess, store: Path,
                                                           behaviour: str):
    register(server, "behaviour.mar", model_name="behaviour-b2", batch_size=2,
             max_batch_delay=3000)
    orders = [{"status": 201, "headers": {"Content-Type": "text/csv", "x-which": "first"},
               "return": "text"},
              {"status": 202, "headers": {"x-which": "second", "x-broken": "a\r\nb"}}]
    with cf.ThreadPoolExecutor(2) as pool:
        first, second = pool.map(
            lambda order: server.inference.post("/predictions/behaviour-b2", json=order), orders)
    assert first.status_code == 201 and second.status_code == 202
    assert first.text == "item 0 of 2" or first.text == "item 1 of 2"
    # a content type set as a header, whatever its case, is the content type (and only once)
    assert first.headers.get_list("content-type") == ["text/csv"]
    assert first.headers["x-which"] == "first" and second.headers["x-which"] == "second"
    # a header HTTP cannot carry is dropped; the answer still arrives
    assert "x-broken" not in second.headers and second.json()["batch"] == 2


def test_output_encodings(server: ServerProcess, behaviour: str):
    r = server.inference.post(behaviour, json={"return": "bytes"})
    assert r.content == bytes([0, 1, 2, 255])
    assert r.headers["content-type"] == "application/octet-stream"
    r = server.inference.post(behaviour, json={"echo": [1, 2]})
    # TorchServe's backend pretty-prints JSON answers with indent=2.
    assert r.text == json.dumps({"item": 0, "batch": 1, "echo": [1, 2]}, indent=2)
    assert r.headers["content-type"] == "application/json"


def test_prediction_exception_sets_its_code(server: ServerProcess, behaviour: str):
    r = server.inference.post(behaviour, json={"raise": "prediction", "code": 599})
    assert r.status_code == 599
    assert r.json() == {"code": 599, "type": "InternalServerException",
                        "message": "custom failure from the handler"}


def test_memory_error_is_507(server: ServerProcess, behaviour: str):
    r = server.inference.post(behaviour, json={"raise": "memory"})
    assert r.status_code == 507
    assert r.json()["code"] == 507


def test_handler_bug_is_503_and_worker_survives(server: ServerProcess, behaviour: str):
    r = server.inference.post(behaviour, json={"raise": "value"})
    assert r.status_code == 503
    assert r.json()["message"] == "Prediction failed"
    assert server.inference.post(behaviour, json={}).status_code == 200


def test_wrong_number_of_answers_fails_every_request_of_the_batch(
        server: ServerProcess, store: Path):
    build_mar(store, "batched", "behaviour_handler.py")
    register(server, "batched.mar", batch_size=4, max_batch_delay=2000)
    orders = [{"answers": "one-extra"}, {}, {}, {}]
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda o: server.inference.post("/predictions/batched", json=o), orders))
    assert [r.status_code for r in results] == [503] * 4
    for r in results:
        assert "number of batch response mismatched" in r.json()["message"]
    # The same four requests without the bad one form one batch and all succeed.
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda i: server.inference.post("/predictions/batched", json={"echo": i}), range(4)))
    assert sorted(r.json()["echo"] for r in results) == [0, 1, 2, 3]
    assert {r.json()["batch"] for r in results} == {4}


def test_initialize_failure_fails_registration_and_server_stays_healthy(
        server: ServerProcess, store: Path):
    build_mar(store, "broken", "init_fails_handler.py")
    r = server.management.post("/models", params={"url": "broken.mar"})
    assert r.status_code == 500
    message = r.json()["message"]
    assert "broken on purpose in initialize" in message and "ValueError" in message
    assert server.management.get("/models/broken").status_code == 404
    assert server.inference.get("/ping").json() == {"status": "Healthy"}
    build_mar(store, "fn-after", "fn_handler.py")
    register(server, "fn-after.mar")
    assert server.inference.post("/predictions/fn-after", content=b"x").status_code == 200


def test_inputs_headers_and_context(server: ServerProcess, store: Path):
    build_mar(store, "echo", "echo_handler.py", config="batchSize: 1\nhandler:\n  greeting: hi\n")
    register(server, "echo.mar")
    r = server.inference.post("/predictions/echo", json={"a": 1}, headers={"x-test": "yes"})
    out = r.json()
    assert out["inputs"] == {"body": {"type": "dict", "value": {"a": 1}}}
    assert out["x_test"] == "yes"
    assert out["request_id"] == r.headers["x-request-id"]
    assert out["body_content_type"] == {"content-type": "application/json"}
    assert out["explain"] is None
    assert out["model_dir_is_cwd"] is True
    assert out["model_name"] == out["manifest_model_name"] == "echo"
    assert out["yaml"] == {"batchSize": 1, "handler": {"greeting": "hi"}}
    assert out["gpu_id"] is None and out["batch_size"] == 1

    text = server.inference.post("/predictions/echo", content="héllo",
                                 headers={"content-type": "text/plain; charset=utf-8"}).json()
    assert text["inputs"] == {"body": {"type": "str", "value": "héllo"}}
    raw = server.inference.post("/predictions/echo", content=b"\x00\x01\x02",
                                headers={"content-type": "application/octet-stream"}).json()
    assert raw["inputs"] == {"body": {"type": "bytearray", "value": 3}}

    form = server.inference.post("/predictions/echo", data={"data": "v1", "extra": "v2"}).json()
    assert form["inputs"] == {"data": {"type": "bytearray", "value": 2},
                              "extra": {"type": "bytearray", "value": 2}}
    multi = server.inference.post(
        "/predictions/echo", files={"file": ("a.json", b'{"k": 3}', "application/json")},
        data={"data": "abc"}).json()
    assert multi["inputs"] == {"data": {"type": "bytearray", "value": 3},
                               "file": {"type": "dict", "value": {"k": 3}}}

    explained = server.inference.post("/explanations/echo/1.0/extra/path", json={}).json()
    assert explained["explain"] == "True"
    assert explained["url_path"] == "extra/path"

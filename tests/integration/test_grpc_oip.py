"""The Open Inference Protocol over gRPC, with tritonclient.grpc unchanged, on the same port as
TorchServe's gRPC inference service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.archives import build_mar
from tests.support.oip_models import build_oip_models
from tests.support.server import ServerProcess

TIMEOUT = 60


@pytest.fixture(scope="module")
def oip_server(store: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ServerProcess]:
    build_oip_models(store)
    build_mar(store, "echo", "echo_handler.py")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, "--models", "all", model_store=store) as srv:
        srv.wait_ready(models=("double", "upper", "v2sum", "wrong", "echo"))
        yield srv


@pytest.fixture(scope="module")
def client(oip_server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(f"127.0.0.1:{oip_server.grpc_inference_port}")
    yield c
    c.close()


def tensor(name: str, array: np.ndarray[Any, Any], datatype: str) -> triton.InferInput:
    t = triton.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def test_health_and_metadata(client: triton.InferenceServerClient):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "serving" and metadata["version"]
    assert client.is_model_ready("double") and client.is_model_ready("double", "1.0")
    assert not client.is_model_ready("double", "9.9")
    assert not client.is_model_ready("missing")
    assert client.get_model_metadata("double", as_json=True) == {
        "name": "double", "versions": ["1.0"], "platform": "pytorch_torchserve",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": ["-1"]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": ["-1"]}]}
    undeclared = client.get_model_metadata("v2sum", as_json=True)
    assert undeclared["versions"] == ["1.0"] and "inputs" not in undeclared
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("missing")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "Model not found: missing" in caught.value.message()


def test_infer_fp32(client: triton.InferenceServerClient):
    x = np.array([1.5, -2.0, 3.25, 1e6], dtype=np.float32)
    result = client.infer("double", [tensor("x", x, "FP32")],
                          outputs=[triton.InferRequestedOutput("y")], request_id="grpc-id",
                          client_timeout=TIMEOUT)
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        "double", "1.0", "grpc-id")
    # No outputs named: every output comes back.
    result = client.infer("double", [tensor("x", x, "FP32")], model_version="1.0")
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)


def test_infer_bytes_and_several_outputs(client: triton.InferenceServerClient):
    text = np.array([b"abc", "héllo".encode()], dtype=np.object_)
    result = client.infer("upper", [tensor("text", text, "BYTES")])
    assert result.as_numpy("upper").tolist() == [b"ABC", "HÉLLO".encode()]
    a = np.array([1, 2, 3], dtype=np.int64)
    b = np.array([[0.5, 0.25]], dtype=np.float64)
    result = client.infer("v2sum", [tensor("a", a, "INT64"), tensor("b", b, "FP64")])
    assert result.as_numpy("sum").tolist() == [6.0]
    assert result.as_numpy("names").tolist() == [b"a", b"b"]


def test_tensor_contents_instead_of_raw(oip_server: ServerProcess):
    """A client that fills InferTensorContents (not raw_input_contents) is served too."""
    with grpc.insecure_channel(f"127.0.0.1:{oip_server.grpc_inference_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="double")
        request.inputs.add(name="x", datatype="FP32", shape=[3],
                           contents=service_pb2.InferTensorContents(fp32_contents=[1, 2, 3.5]))
        response = stub.ModelInfer(request, timeout=TIMEOUT)
        assert [o.name for o in response.outputs] == ["y"]
        assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [2, 4, 7]
        request.inputs[0].shape[:] = [4]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "shape needs 4 elements" in caught.value.details()


@pytest.mark.parametrize(("model", "inputs", "code", "needle"), [
    ("missing", [("x", np.zeros(2, np.float32), "FP32")], "NOT_FOUND", "Model not found"),
    ("double", [("x", np.zeros(2, np.int32), "INT32")], "INVALID_ARGUMENT",
     "does not match the model's FP32"),
    ("double", [("z", np.zeros(2, np.float32), "FP32")], "INVALID_ARGUMENT", "unknown"),
    ("wrong", [("x", np.zeros(2, np.float32), "FP32")], "INTERNAL", "declared shape"),
])
def test_errors(client: triton.InferenceServerClient, model: str, inputs: list[Any],
                code: str, needle: str):
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [tensor(*i) for i in inputs], client_timeout=TIMEOUT)
    assert caught.value.status() == f"StatusCode.{code}", caught.value.message()
    assert needle in caught.value.message()


def test_same_port_serves_torchserve_predictions(oip_server: ServerProcess):
    from tests.support.tsgrpc import torchserve_stubs

    ts = torchserve_stubs()
    with grpc.insecure_channel(f"127.0.0.1:{oip_server.grpc_inference_port}") as channel:
        stub = ts["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
        answer = stub.Predictions(ts["inference_pb2"].PredictionsRequest(
            model_name="echo", input={"body": b"four"}), timeout=TIMEOUT)
        assert json.loads(answer.prediction)["inputs"]["body"]["value"] == 4


def test_torchserve_oip_stubs_are_answered_too(oip_server: ServerProcess):
    """TorchServe's own OIP proto (package org.pytorch.serve.grpc.openinference) reaches the
    same service: stubs compiled from it work unchanged."""
    from tests.support.tsgrpc import torchserve_stubs

    ts = torchserve_stubs()
    pb = ts["open_inference_grpc_pb2"]
    with grpc.insecure_channel(f"127.0.0.1:{oip_server.grpc_inference_port}") as channel:
        stub = ts["open_inference_grpc_pb2_grpc"].GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT).live
        assert stub.ModelReady(pb.ModelReadyRequest(name="double"), timeout=TIMEOUT).ready
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="double"), timeout=TIMEOUT)
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1])]
        request = pb.ModelInferRequest(model_name="double", id="ts-oip")
        request.inputs.add(name="x", datatype="FP32", shape=[2])
        request.raw_input_contents.append(np.array([1.5, -3], dtype="<f4").tobytes())
        response = stub.ModelInfer(request, timeout=TIMEOUT)
        assert (response.id, [o.name for o in response.outputs]) == ("ts-oip", ["y"])
        assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [3, -6]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(pb.ModelInferRequest(model_name="missing"), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

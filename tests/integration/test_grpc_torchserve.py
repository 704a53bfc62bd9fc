"""TorchServe's gRPC APIs, called with stubs compiled from TorchServe's own protos: inference
(ping, predictions, streams), management, errors and their codes, deadlines, cancellation,
health checking and reflection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import torch
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.archives import HANDLERS, build_mar
from tests.support.polling import wait_for, wait_queued
from tests.support.server import ServerProcess
from tests.support.tsgrpc import torchserve_stubs

TIMEOUT = 60  # s: generous, for a loaded 2-core machine


@pytest.fixture(scope="module")
def ts() -> dict[str, ModuleType]:
    return torchserve_stubs()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger") / "slow.jsonl"


@pytest.fixture(scope="module")
def grpc_server(store: Path, ledger: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:
    build_mar(store, "echo", "echo_handler.py")
    build_mar(store, "behaviour", "behaviour_handler.py")
    # One batch at a time (nothing sent ahead): what waits behind the running one queues.
    build_mar(store, "slow", "slow_handler.py",
              config=f"batchSize: 1\nmaxInflightBatches: 1\nledger: {ledger}\n")
    build_mar(store, "narrow", "slow_handler.py",
              config="batchSize: 1\njobQueueSize: 1\nmaxInflightBatches: 1\n")
    build_mar(store, "versioned", "echo_handler.py", version="1.0")
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text("max_request_size=100000\n"
                   "load_models=echo.mar,behaviour.mar,slow.mar,narrow.mar,versioned.mar\n")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, model_store=store, ts_config=cfg) as srv:
        srv.wait_ready(models=("echo", "behaviour", "slow", "narrow", "versioned"))
        yield srv


@pytest.fixture(scope="module")
def inference(grpc_server: ServerProcess, ts: dict[str, ModuleType]) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_server.grpc_inference_port}") as channel:
        yield ts["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)


@pytest.fixture(scope="module")
def management(grpc_server: ServerProcess, ts: dict[str, ModuleType]) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_server.grpc_management_port}") as channel:
        yield ts["management_pb2_grpc"].ManagementAPIsServiceStub(channel)


def predict(ts: dict[str, ModuleType], model: str, version: str = "", **inputs: bytes) -> Any:
    return ts["inference_pb2"].PredictionsRequest(model_name=model, model_version=version,
                                                  input=inputs)


def rpc_error(call: Any, *args: Any, timeout: float = TIMEOUT, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=timeout, **kwargs)
    return caught.value


def order(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# -- inference ------------------------------------------------------------------------------

def test_ping(inference: Any):
    answer = inference.Ping(empty_pb2.Empty(), timeout=TIMEOUT)
    assert json.loads(answer.health) == {"status": "Healthy"}


def test_inputs_reach_the_handler_as_torchserve_gives_them(inference: Any,
                                                           ts: dict[str, ModuleType]):
    answer, call = inference.Predictions.with_call(
        predict(ts, "echo", data=b"hello", extra=b"\x00\xff"), timeout=TIMEOUT,
        metadata=(("x-test", "from-metadata"), ("x-request-id", "grpc-req-1")))
    seen = json.loads(answer.prediction)
    # Each map entry is one named input of raw bytes (a bytearray in the handler).
    assert seen["inputs"] == {"data": {"type": "bytearray", "value": 5},
                              "extra": {"type": "bytearray", "value": 2}}
    assert seen["x_test"] == "from-metadata"
    assert seen["request_id"] == "grpc-req-1"
    assert ("x-request-id", "grpc-req-1") in tuple(call.trailing_metadata())


def test_model_version_is_optional(inference: Any, ts: dict[str, ModuleType]):
    default = json.loads(inference.Predictions(predict(ts, "versioned", data=b"x"),
                                               timeout=TIMEOUT).prediction)
    given = json.loads(inference.Predictions(predict(ts, "versioned", "1.0", data=b"x"),
                                             timeout=TIMEOUT).prediction)
    assert default["model_name"] == given["model_name"] == "versioned"
    error = rpc_error(inference.Predictions, predict(ts, "versioned", "9.9", data=b"x"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "9.9" in error.details()


def test_a_real_handler_answers_as_over_rest(grpc_server: ServerProcess, store: Path,
                                             management: Any, inference: Any,
                                             ts: dict[str, ModuleType], tmp_path: Path):
    """A BaseHandler subclass loading an eager model (model file + state dict): the same input
    gives the model's own output through gRPC, and the same as through REST."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_linear", HANDLERS / "tiny_linear.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(3)
    model = module.TinyLinear().eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    build_mar(store, "linear", "json_tensor_handler.py", serialized_file=tmp_path / "weights.pt",
              model_file=HANDLERS / "tiny_linear.py")
    management.RegisterModel(ts["management_pb2"].RegisterModelRequest(
        url="linear.mar", initial_workers=1, synchronous=True), timeout=120)
    x = [0.5, -1.0, 2.0]
    over_grpc = json.loads(inference.Predictions(predict(ts, "linear", data=json.dumps(x).encode()),
                                                 timeout=TIMEOUT).prediction)
    over_rest = grpc_server.inference.post("/predictions/linear", json=x)
    assert over_rest.status_code == 200, over_rest.text
    with torch.inference_mode():
        expected = model(torch.tensor([x])).tolist()[0]
    assert over_grpc == pytest.approx(expected, abs=1e-5)
    assert over_grpc == pytest.approx(over_rest.json(), abs=1e-6)


@pytest.mark.parametrize(("body", "code", "needle"), [
    (order(raise_="none"), None, None),
    (order(**{"raise": "prediction", "code": 507}), grpc.StatusCode.INTERNAL,
     "custom failure"),
    (order(**{"raise": "prediction", "code": 409}), grpc.StatusCode.ABORTED, "custom failure"),
    (order(**{"raise": "prediction", "code": 404}), grpc.StatusCode.NOT_FOUND,
     "custom failure"),
    (order(**{"raise": "memory"}), grpc.StatusCode.INTERNAL, None),
    (order(status=429), grpc.StatusCode.RESOURCE_EXHAUSTED, None),
])
def test_handler_errors_map_to_torchserve_codes(inference: Any, ts: dict[str, ModuleType],
                                                body: bytes, code: grpc.StatusCode | None,
                                                needle: str | None):
    if code is None:
        answer = inference.Predictions(predict(ts, "behaviour", body=body), timeout=TIMEOUT)
        assert json.loads(answer.prediction)["item"] == 0
        return
    error = rpc_error(inference.Predictions, predict(ts, "behaviour", body=body))
    assert error.code() == code, error.details()
    if needle:
        assert needle in error.details()


def test_request_errors(inference: Any, ts: dict[str, ModuleType]):
    error = rpc_error(inference.Predictions, predict(ts, "missing", data=b"x"))
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND,
                                               "Model not found: missing")
    error = rpc_error(inference.Predictions, predict(ts, "", data=b"x"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_name is required" in error.details()
    # max_request_size=100000: a larger message is refused before it is decoded.
    error = rpc_error(inference.Predictions, predict(ts, "echo", data=b"x" * 100_001))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The server is fine afterwards.
    assert inference.Predictions(predict(ts, "echo", data=b"ok"), timeout=TIMEOUT).prediction


def ledger_tags(ledger: Path) -> list[Any]:
    if not ledger.exists():
        return []
    return [json.loads(line).get("tag") for line in ledger.read_text().splitlines()]


def test_deadline_is_deadline_exceeded_and_the_work_never_runs(
        inference: Any, ts: dict[str, ModuleType], ledger: Path):
    busy = inference.Predictions.future(predict(ts, "slow", body=order(sleep=2, tag="busy")),
                                        timeout=TIMEOUT)
    wait_for(lambda: "busy" in ledger_tags(ledger), timeout=TIMEOUT)
    error = rpc_error(inference.Predictions,
                      predict(ts, "slow", body=order(tag="too-late")), timeout=0.5)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert json.loads(busy.result().prediction)["tag"] == "busy"
    after = inference.Predictions(predict(ts, "slow", body=order(tag="after")), timeout=TIMEOUT)
    assert json.loads(after.prediction)["tag"] == "after"
    assert "too-late" not in ledger_tags(ledger)  # it was withdrawn from the queue


def test_client_cancel_withdraws_the_work(inference: Any, ts: dict[str, ModuleType],
                                         ledger: Path, grpc_server: ServerProcess):
    busy = inference.Predictions.future(predict(ts, "slow", body=order(sleep=2, tag="busy2")),
                                        timeout=TIMEOUT)
    wait_for(lambda: "busy2" in ledger_tags(ledger), timeout=TIMEOUT)
    queued = inference.Predictions.future(predict(ts, "slow", body=order(tag="cancelled")),
                                          timeout=TIMEOUT)
    wait_queued(grpc_server, "slow", 1)  # it reached the server's queue
    assert queued.cancel()
    assert json.loads(busy.result().prediction)["tag"] == "busy2"
    after = inference.Predictions(predict(ts, "slow", body=order(tag="after2")),
                                  timeout=TIMEOUT)
    assert json.loads(after.prediction)["tag"] == "after2"
    assert "cancelled" not in ledger_tags(ledger)


def test_full_queue_is_unavailable(inference: Any, grpc_server: ServerProcess,
                                   ts: dict[str, ModuleType]):
    busy = inference.Predictions.future(predict(ts, "narrow", body=order(sleep=2)),
                                        timeout=TIMEOUT)

    wait_queued(grpc_server, "narrow", 0, timeout=TIMEOUT)  # the worker has it
    queued = inference.Predictions.future(predict(ts, "narrow", body=order()), timeout=TIMEOUT)
    wait_queued(grpc_server, "narrow", 1, timeout=TIMEOUT)  # the queue is full
    error = rpc_error(inference.Predictions, predict(ts, "narrow", body=order()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "queue" in error.details().lower()
    assert busy.result().prediction and queued.result().prediction


def test_stream_predictions_ends_with_the_final_answer(inference: Any,
                                                       ts: dict[str, ModuleType]):
    answers = list(inference.StreamPredictions(predict(ts, "echo", data=b"abc"),
                                               timeout=TIMEOUT))
    assert answers and json.loads(answers[-1].prediction)["inputs"]["data"]["value"] == 3
    error = rpc_error(lambda *a, **k: list(inference.StreamPredictions(*a, **k)),
                      predict(ts, "missing", data=b"x"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_stream_predictions2_answers_each_request_in_order(inference: Any,
                                                           ts: dict[str, ModuleType]):
    pb = ts["inference_pb2"]
    requests = [
        pb.PredictionsRequest(model_name="echo", input={"data": b"a" * n}, sequence_id="seq-1")
        for n in (1, 2, 3)]
    requests.insert(1, pb.PredictionsRequest(model_name="echo", input={"data": b"x"}))
    requests.append(pb.PredictionsRequest(model_name="missing", input={"data": b"x"},
                                          sequence_id="seq-1"))
    answers = list(inference.StreamPredictions2(iter(requests), timeout=TIMEOUT))
    assert len(answers) == 5
    sizes = [json.loads(a.prediction)["inputs"]["data"]["value"]
             for a in answers if not a.HasField("status")]
    assert sizes == [1, 2, 3]
    assert all(a.sequence_id == "seq-1" for i, a in enumerate(answers) if i != 1)
    # Failed requests are answered in the stream, which goes on.
    assert answers[1].HasField("status") and "sequenceId is required" in answers[1].status.message
    assert answers[4].status.code == grpc.StatusCode.NOT_FOUND.value[0]


# -- management -----------------------------------------------------------------------------

def test_management_rpcs(management: Any, inference: Any, store: Path,
                         ts: dict[str, ModuleType]):
    pb = ts["management_pb2"]
    build_mar(store, "managed", "echo_handler.py", version="1.0", file_name="managed-1.mar")
    build_mar(store, "managed", "echo_handler.py", version="2.0", file_name="managed-2.mar")
    msg = management.RegisterModel(pb.RegisterModelRequest(
        url="managed-1.mar", initial_workers=1, synchronous=True), timeout=120).msg
    assert msg == 'Model "managed" Version: 1.0 registered with 1 initial workers'
    management.RegisterModel(pb.RegisterModelRequest(
        url="managed-2.mar", initial_workers=1, synchronous=True), timeout=120)
    listed = json.loads(management.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).msg)
    # Listed by its default version: the first registered, until set-default says otherwise.
    assert {"modelName": "managed", "modelUrl": "managed-1.mar"} in listed["models"]
    page = json.loads(management.ListModels(pb.ListModelsRequest(limit=1), timeout=TIMEOUT).msg)
    assert len(page["models"]) == 1 and page["nextPageToken"] == "1"
    described = json.loads(management.DescribeModel(
        pb.DescribeModelRequest(model_name="managed", model_version="all"), timeout=TIMEOUT).msg)
    assert sorted(d["modelVersion"] for d in described) == ["1.0", "2.0"]
    msg = management.SetDefault(pb.SetDefaultRequest(model_name="managed", model_version="2.0"),
                                timeout=TIMEOUT).msg
    assert msg == 'Default version successfully updated for model "managed" to "2.0"'
    described = json.loads(management.DescribeModel(
        pb.DescribeModelRequest(model_name="managed"), timeout=TIMEOUT).msg)
    assert described[0]["modelVersion"] == "2.0"
    msg = management.ScaleWorker(pb.ScaleWorkerRequest(
        model_name="managed", model_version="2.0", min_worker=2, max_worker=2,
        synchronous=True), timeout=120).msg
    assert msg == "Workers scaled to 2 for model: managed"
    described = json.loads(management.DescribeModel(
        pb.DescribeModelRequest(model_name="managed", model_version="2.0"), timeout=TIMEOUT).msg)
    assert len(described[0]["workers"]) == 2
    answer = inference.Predictions(predict(ts, "managed", data=b"x"), timeout=TIMEOUT)
    assert json.loads(answer.prediction)["model_name"] == "managed"
    msg = management.UnregisterModel(pb.UnregisterModelRequest(
        model_name="managed", model_version="1.0"), timeout=120).msg
    assert "managed" in msg
    error = rpc_error(management.DescribeModel,
                      pb.DescribeModelRequest(model_name="managed", model_version="1.0"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_register_runtime_is_checked_as_over_rest(management: Any, store: Path,
                                                  ts: dict[str, ModuleType]):
    pb = ts["management_pb2"]
    build_mar(store, "runtimed", "echo_handler.py")
    error = rpc_error(management.RegisterModel,
                      pb.RegisterModelRequest(url="runtimed.mar", runtime="LSP"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "runtime 'LSP' cannot serve archive runtimed.mar" in error.details()
    management.RegisterModel(pb.RegisterModelRequest(
        url="runtimed.mar", runtime="python3", synchronous=True), timeout=120)
    described = json.loads(management.DescribeModel(
        pb.DescribeModelRequest(model_name="runtimed"), timeout=TIMEOUT).msg)
    assert described[0]["runtime"] == "python3"
    management.UnregisterModel(pb.UnregisterModelRequest(model_name="runtimed"), timeout=120)


def test_management_errors(management: Any, ts: dict[str, ModuleType]):
    pb = ts["management_pb2"]
    cases = [
        (management.DescribeModel, pb.DescribeModelRequest(model_name="missing"),
         grpc.StatusCode.NOT_FOUND),
        (management.RegisterModel, pb.RegisterModelRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (management.RegisterModel, pb.RegisterModelRequest(url="echo.mar"),
         grpc.StatusCode.ABORTED),  # 409: already registered
        (management.ScaleWorker, pb.ScaleWorkerRequest(model_name="missing"),
         grpc.StatusCode.NOT_FOUND),
        (management.ScaleWorker, pb.ScaleWorkerRequest(model_name="echo", min_worker=-1),
         grpc.StatusCode.INVALID_ARGUMENT),
        (management.SetDefault, pb.SetDefaultRequest(model_name="echo", model_version="7.0"),
         grpc.StatusCode.NOT_FOUND),
        (management.UnregisterModel, pb.UnregisterModelRequest(model_name="missing"),
         grpc.StatusCode.NOT_FOUND),
        (management.ListModels, pb.ListModelsRequest(limit=-1),
         grpc.StatusCode.INVALID_ARGUMENT),
        (management.RegisterModel, pb.RegisterModelRequest(url="echo.mar", runtime="cpp"),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for method, request, code in cases:
        error = rpc_error(method, request)
        assert error.code() == code, (request, error.details())
        assert error.details()


# -- health and reflection ------------------------------------------------------------------

@pytest.mark.parametrize("which", ["inference", "management"])
def test_health_and_reflection(grpc_server: ServerProcess, which: str):
    port = getattr(grpc_server, f"grpc_{which}_port")
    expected = {"inference": {"org.pytorch.serve.grpc.inference.InferenceAPIsService",
                              "inference.GRPCInferenceService"},
                "management": {"org.pytorch.serve.grpc.management.ManagementAPIsService"}}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", *expected[which]):
            status = health.Check(health_pb2.HealthCheckRequest(service=service),
                                  timeout=TIMEOUT).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        error = rpc_error(health.Check, health_pb2.HealthCheckRequest(service="no.Such"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT))
        names = {s.name for s in answers[0].list_services_response.service}
        assert names == {*expected[which], "grpc.health.v1.Health",
                         "grpc.reflection.v1alpha.ServerReflection"}


# -- streaming handlers ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def stream_ledger(grpc_server: ServerProcess, management: Any, store: Path,
                  ts: dict[str, ModuleType], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `stream` model (stream_handler.py: TorchServe's send_intermediate_predict_response)."""
    path = tmp_path_factory.mktemp("stream") / "ledger.txt"
    build_mar(store, "stream", "stream_handler.py",
              config=f"minWorkers: 1\nresponseTimeout: 120\nledger: {json.dumps(str(path))}\n")
    management.RegisterModel(ts["management_pb2"].RegisterModelRequest(
        url="stream.mar", synchronous=True), timeout=120)
    return path


def stream_tokens(ledger: Path, tag: str) -> int:
    if not ledger.exists():
        return 0
    return sum(1 for line in ledger.read_text().splitlines() if line.startswith(f"{tag} "))


def test_stream_predictions_carries_intermediate_answers(inference: Any, stream_ledger: Path,
                                                         ts: dict[str, ModuleType],
                                                         tmp_path: Path):
    go = tmp_path / "go"  # the handler sends its second token only once this exists
    answers = inference.StreamPredictions(
        predict(ts, "stream", body=order(tokens=3, wait_for=str(go))), timeout=TIMEOUT)
    first = next(answers)  # arrives while the handler still waits: it was not buffered
    go.touch()
    assert [first.prediction, *(a.prediction for a in answers)] == [b"t0", b"t1", b"t2", b"end"]
    # Predictions (unary) takes the final answer only.
    unary = inference.Predictions(predict(ts, "stream", body=order(tokens=2)), timeout=TIMEOUT)
    assert unary.prediction == b"end"


def test_stream_error_after_the_first_answer_ends_the_call(inference: Any, stream_ledger: Path,
                                                           ts: dict[str, ModuleType]):
    answers = inference.StreamPredictions(
        predict(ts, "stream", body=order(tokens=3, fail_after=1)), timeout=TIMEOUT)
    assert next(answers).prediction == b"t0"
    with pytest.raises(grpc.RpcError) as caught:
        list(answers)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # 503 "Prediction failed"
    assert "Prediction failed" in caught.value.details()


def test_cancelling_a_stream_stops_the_handler(grpc_server: ServerProcess, inference: Any,
                                               stream_ledger: Path, ts: dict[str, ModuleType]):
    answers = inference.StreamPredictions(
        predict(ts, "stream", body=order(tokens=200, sleep=0.05, tag="gone")), timeout=TIMEOUT)
    assert [next(answers).prediction, next(answers).prediction] == [b"t0", b"t1"]
    answers.cancel()
    # The handler is stopped at its next token after the gateway notices, long before its
    # 200 tokens (10 s); the worker then serves the next request.
    wait_for(lambda: inference.Predictions(
        predict(ts, "stream", body=order(tokens=1, tag="after")), timeout=TIMEOUT
    ).prediction == b"end", timeout=60)
    assert 2 <= stream_tokens(stream_ledger, "gone") < 100
    assert "every client of the batch went away" in grpc_server.log()


def test_stream_predictions2_streams_each_request(inference: Any, stream_ledger: Path,
                                                  ts: dict[str, ModuleType]):
    pb = ts["inference_pb2"]
    requests = [pb.PredictionsRequest(model_name="stream", sequence_id="s",
                                      input={"body": order(tokens=n)}) for n in (2, 0)]
    answers = list(inference.StreamPredictions2(iter(requests), timeout=TIMEOUT))
    assert [a.prediction for a in answers] == [b"t0", b"t1", b"end", b"end"]
    assert all(a.sequence_id == "s" for a in answers)

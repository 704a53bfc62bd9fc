"""The access log covers gRPC calls as TorchServe's gRPC interceptor does (one line per call,
with the call's gRPC status code), and TorchServe's Requests2XX/4XX/5XX stay HTTP's only:
real grpc clients (TorchServe's stubs, tritonclient) against a real server."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.archives import build_mar
from tests.support.scrape import Scrape, scrape
from tests.support.server import ServerProcess
from tests.support.tsgrpc import torchserve_stubs

TIMEOUT = 60
GRPC_LINE = re.compile(r'ACCESS_LOG - /127\.0\.0\.1:\d+ "gRPC (\S+) HTTP/2\.0" (\d+) (\d+)$')
INFERENCE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
MANAGEMENT = "org.pytorch.serve.grpc.management.ManagementAPIsService"
OIP = "inference.GRPCInferenceService"
OK, INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED = 0, 3, 5, 16


@pytest.fixture(scope="module")
def ts() -> dict[str, ModuleType]:
    return torchserve_stubs()


def counts(scraped: Scrape) -> tuple[float, float, float]:
    return tuple(scraped.value(f"Requests{c}XX_total") for c in "245")  # type: ignore[return-value]


def calls(server: ServerProcess, ts: dict[str, ModuleType]) -> None:
    """Three OK predictions, a ping, a stream, errors of three codes, OIP, and a health check."""
    inf_pb, mgmt_pb = ts["inference_pb2"], ts["management_pb2"]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_inference_port}") as channel:
        inference = ts["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
        inference.Ping(empty_pb2.Empty(), timeout=TIMEOUT)
        for _ in range(3):
            inference.Predictions(inf_pb.PredictionsRequest(model_name="echo",
                                                            input={"data": b"x"}),
                                  timeout=TIMEOUT)
        assert len(list(inference.StreamPredictions(
            inf_pb.PredictionsRequest(model_name="echo", input={"data": b"x"}),
            timeout=TIMEOUT))) == 1
        with pytest.raises(grpc.RpcError) as missing:
            inference.Predictions(inf_pb.PredictionsRequest(model_name="absent"),
                                  timeout=TIMEOUT)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_management_port}") as channel:
        management = ts["management_pb2_grpc"].ManagementAPIsServiceStub(channel)
        management.ListModels(mgmt_pb.ListModelsRequest(), timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError) as bad:
            management.RegisterModel(mgmt_pb.RegisterModelRequest(), timeout=TIMEOUT)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_inference_port}")
    try:
        assert client.is_server_live()
        data = triton.InferInput("x", [1], "FP32")
        data.set_data_from_numpy(np.zeros(1, dtype=np.float32))
        with pytest.raises(InferenceServerException, match="absent"):
            client.infer("absent", [data])
    finally:
        client.close()


EXPECTED = Counter({
    (f"{INFERENCE}/Ping", OK): 1, (f"{INFERENCE}/Predictions", OK): 3,
    (f"{INFERENCE}/StreamPredictions", OK): 1, (f"{INFERENCE}/Predictions", NOT_FOUND): 1,
    (f"{MANAGEMENT}/ListModels", OK): 1, (f"{MANAGEMENT}/RegisterModel", INVALID_ARGUMENT): 1,
    (f"{OIP}/ServerLive", OK): 1, (f"{OIP}/ModelInfer", NOT_FOUND): 1,
})


def test_grpc_calls_are_logged_with_their_status_and_not_counted_as_http(
        tmp_path: Path, store: Path, ts: dict[str, ModuleType]) -> None:
    build_mar(store, "echo", "echo_handler.py")
    logs = tmp_path / "logs"
    with ServerProcess(tmp_path / "server.log", "--models", "echo=echo.mar", "--access-log",
                       model_store=store, env={"LOG_LOCATION": str(logs)}) as server:
        server.wait_ready(("echo",))
        before = counts(scrape(server))
        calls(server, ts)
        assert counts(scrape(server)) == before  # gRPC is in none of TorchServe's counters
        assert server.inference.post("/predictions/echo", content=b"x").status_code == 200
        assert server.inference.post("/predictions/absent", content=b"x").status_code == 404
        assert counts(scrape(server)) == (before[0] + 1, before[1] + 1, before[2])
    lines = (logs / "access_log.log").read_text().splitlines()
    grpc_lines = [m for m in map(GRPC_LINE.search, lines) if m]
    assert Counter((m.group(1), int(m.group(2))) for m in grpc_lines) == EXPECTED
    assert not any("grpc.health" in line for line in lines)  # probes are not logged
    assert sum('"POST /predictions/echo HTTP/1.1" 200' in line for line in lines) == 1


def test_json_lines_carry_the_request_id_and_refusals_are_logged(
        tmp_path: Path, store: Path, ts: dict[str, ModuleType]) -> None:
    build_mar(store, "echo", "echo_handler.py")
    config = tmp_path / "config.properties"
    config.write_text("access_log=true\naccess_log_format=json\n")
    server = ServerProcess(tmp_path / "server.log", "--models", "echo=echo.mar",
                           model_store=store, ts_config=config, token_auth=True)
    with server:
        server.wait_ready(("echo",))
        key = json.loads((server.cwd / "key_file.json").read_text())["inference"]["key"]
        request = ts["inference_pb2"].PredictionsRequest(model_name="echo", input={"data": b"x"})
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_inference_port}") as channel:
            stub: Any = ts["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
            stub.Predictions(request, timeout=TIMEOUT, metadata=(
                ("authorization", f"Bearer {key}"), ("x-request-id", "grpc-one")))
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predictions(request, timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    records = [json.loads(line.split("ACCESS_LOG - ", 1)[1])
               for line in server.log().splitlines() if "ACCESS_LOG - {" in line]
    grpc_records = [r for r in records if r["method"] == "gRPC"]
    assert len(grpc_records) == 2, grpc_records
    answered, refusal = grpc_records
    assert answered["path"] == f"{INFERENCE}/Predictions"
    assert answered["protocol"] == "HTTP/2.0" and answered["status"] == OK
    assert answered["request_id"] == "grpc-one"
    assert isinstance(answered["duration_ms"], int)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", answered["remote"])
    assert refusal["status"] == UNAUTHENTICATED and refusal["request_id"] is None

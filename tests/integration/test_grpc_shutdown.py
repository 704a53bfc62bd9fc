"""SIGTERM with gRPC calls in flight: they are answered, health says NOT_SERVING, new calls
are refused with UNAVAILABLE, and the server exits cleanly."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.archives import build_mar
from tests.support.polling import wait_for, wait_queued
from tests.support.server import ServerProcess
from tests.support.tsgrpc import torchserve_stubs


def test_sigterm_drains_grpc_calls(store: Path, tmp_path: Path):
    ts = torchserve_stubs()
    ledger = tmp_path / "ledger.jsonl"
    build_mar(store, "slow", "slow_handler.py",
              config=f"batchSize: 1\nmaxInflightBatches: 1\nledger: {ledger}\n")
    srv = ServerProcess(tmp_path / "server.log", "--models", "slow.mar", model_store=store)
    with srv:
        srv.wait_ready(models=("slow",))
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_inference_port}") as channel:
            stub = ts["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            def call(tag: str, sleep: float = 0) -> grpc.Future:
                body = json.dumps({"tag": tag, "sleep": sleep}).encode()
                return stub.Predictions.future(ts["inference_pb2"].PredictionsRequest(
                    model_name="slow", input={"body": body}), timeout=60)

            running = call("running", sleep=3)
            wait_for(lambda: ledger.exists() and "running" in ledger.read_text(), timeout=60)
            queued = call("queued")
            wait_queued(srv, "slow", 1)  # it waits in the queue when the drain begins
            srv.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "Shutting down" in srv.log(), timeout=30)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                call("late").result()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert json.loads(running.result().prediction)["tag"] == "running"
            assert json.loads(queued.result().prediction)["tag"] == "queued"
        assert srv.proc.wait(60) == 0

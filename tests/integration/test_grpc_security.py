"""gRPC with TLS (a self-signed certificate), with token authorization, and the start-up
errors of its settings."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.support.archives import build_mar
from tests.support.server import ROOT, ServerProcess
from tests.support.tsgrpc import torchserve_stubs

TIMEOUT = 60


@pytest.fixture(scope="module")
def ts() -> dict[str, ModuleType]:
    return torchserve_stubs()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(store: Path, certificate: tuple[Path, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    build_mar(store, "echo", "echo_handler.py")
    cert, key = certificate
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text(f"enable_grpc_ssl=true\ncertificate_file={cert}\nprivate_key_file={key}\n"
                   "load_models=echo.mar\n")
    log = tmp_path_factory.mktemp("logs") / "tls.log"
    with ServerProcess(log, model_store=store, ts_config=cfg) as srv:
        srv.wait_ready(models=("echo",))
        yield srv


def test_tls(tls_server: ServerProcess, certificate: tuple[Path, Path],
             ts: dict[str, ModuleType]):
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate[0].read_bytes())
    request = ts["inference_pb2"].PredictionsRequest(model_name="echo", input={"data": b"tls"})
    with grpc.secure_channel(f"localhost:{tls_server.grpc_inference_port}",
                             credentials) as channel:
        stub = ts["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
        answer = stub.Predictions(request, timeout=TIMEOUT)
        assert json.loads(answer.prediction)["inputs"]["data"]["value"] == 3
    with grpc.secure_channel(f"localhost:{tls_server.grpc_management_port}",
                             credentials) as channel:
        stub = ts["management_pb2_grpc"].ManagementAPIsServiceStub(channel)
        listed = json.loads(stub.ListModels(ts["management_pb2"].ListModelsRequest(),
                                            timeout=TIMEOUT).msg)
        assert listed["models"][0]["modelName"] == "echo"
    # Plain text to a TLS port fails; it does not reach the model.
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.grpc_inference_port}") as channel:
        stub = ts["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predictions(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def token_server(store: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServerProcess]:
    build_mar(store, "echo", "echo_handler.py")
    log = tmp_path_factory.mktemp("logs") / "token.log"
    with ServerProcess(log, "--models", "echo.mar", model_store=store,
                       token_auth=True) as srv:
        srv.wait_ready(models=("echo",))
        yield srv


def metadata(srv: ServerProcess, kind: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {srv.keys()[kind]['key']}"),)


def test_token_authorization(token_server: ServerProcess, ts: dict[str, ModuleType]):
    srv = token_server
    request = ts["inference_pb2"].PredictionsRequest(model_name="echo", input={"data": b"k"})
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_inference_port}") as channel:
        stub = ts["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
        for sent in [(), metadata(srv, "management"), (("authorization", "Bearer nope"),),
                     (("authorization", srv.keys()["inference"]["key"]),)]:
            for call, message in ((stub.Predictions, request), (stub.Ping, empty_pb2.Empty())):
                with pytest.raises(grpc.RpcError) as caught:
                    call(message, metadata=sent, timeout=TIMEOUT)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "Token Authorization failed" in caught.value.details()
        answer = stub.Predictions(request, metadata=metadata(srv, "inference"), timeout=TIMEOUT)
        seen = json.loads(answer.prediction)
        assert seen["inputs"]["data"]["value"] == 1
        # Streams are guarded as well.
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StreamPredictions(request, timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The OIP service on the same port takes the same key.
        oip = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            oip.ServerReady(service_pb2.ServerReadyRequest(), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert oip.ServerReady(service_pb2.ServerReadyRequest(), timeout=TIMEOUT,
                               metadata=metadata(srv, "inference")).ready
        # Health needs no key (a probe has none); it tells nothing about the models.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == \
            health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_management_port}") as channel:
        stub: Any = ts["management_pb2_grpc"].ManagementAPIsServiceStub(channel)
        listing = ts["management_pb2"].ListModelsRequest()
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListModels(listing, metadata=metadata(srv, "inference"), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = stub.ListModels(listing, metadata=metadata(srv, "management"), timeout=TIMEOUT)
        assert json.loads(listed.msg)["models"][0]["modelName"] == "echo"


def start_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving", "start", "--disable-token-auth",
                           "--inference-address", "http://127.0.0.1:0",
                           "--management-address", "http://127.0.0.1:0", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_busy_grpc_port_stops_the_start(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = start_cli("--grpc-inference-port", str(port), "--grpc-management-port", "0",
                           cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"gRPC Inference API: cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize(("properties", "needle"), [
    ("enable_grpc_ssl=true\n", "enable_grpc_ssl needs certificate_file and private_key_file"),
    ("certificate_file={cert}\nprivate_key_file={key}\n", "serve only gRPC"),
    ("grpc_inference_address=http://127.0.0.1:7070\n", "expected a host name or IP address"),
    ("grpc_management_max_connection_age_ms=0\n", "grpc_management_max_connection_age_ms"),
])
def test_bad_grpc_settings_stop_the_start(tmp_path: Path, certificate: tuple[Path, Path],
                                          properties: str, needle: str):
    cfg = tmp_path / "config.properties"
    cfg.write_text(properties.format(cert=certificate[0], key=certificate[1]))
    result = start_cli("--ts-config", str(cfg), cwd=tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr

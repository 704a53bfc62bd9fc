"""Starting the server: the default model store, config.properties, start-up errors, SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_store.build import build_all
from tests.support.archives import build_mar
from tests.support.server import ROOT, ServerProcess, free_port


@pytest.fixture(scope="module")
def default_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default-store")
    build_all(out, only=["noop", "minilm"])
    return out


def embed(server: ServerProcess, text: str) -> np.ndarray:
    r = server.inference.post("/predictions/minilm", content=text.encode(),
                              headers={"content-type": "text/plain"})
    assert r.status_code == 200, r.text
    return np.array(r.json())


def test_default_models_serve_and_minilm_ranks_a_paraphrase(default_store: Path,
                                                            tmp_path: Path):
    with ServerProcess(tmp_path / "log", "--models", "all", model_store=default_store,
                       enable_model_api=False) as srv:
        srv.wait_ready(models=("noop", "minilm"))
        assert srv.inference.post("/predictions/noop", json={}).json() == {"ok": True}
        described = srv.management.get("/models/minilm").json()[0]
        assert described["loadedAtStartup"] is True and described["batchSize"] == 8

        anchor = embed(srv, "A man is playing a guitar on stage.")
        paraphrase = embed(srv, "On stage, a man plays the guitar.")
        unrelated = embed(srv, "The quarterly tax report is due next Monday.")
        assert anchor.shape == (384,)
        assert np.linalg.norm(anchor) == pytest.approx(1.0, abs=1e-4)
        assert anchor @ paraphrase > anchor @ unrelated + 0.3
        assert srv.stop() == 0


def test_config_properties_load_models_and_models_json(default_store: Path, tmp_path: Path):
    build_mar(default_store, "plain", "fn_handler.py")  # no model-config.yaml
    cfg = tmp_path / "config.properties"
    cfg.write_text(f"model_store={default_store}\n"
                   "load_models=fast=plain.mar,noop.mar\n"
                   'models={"fast": {"1.0": {"batchSize": 3, "maxBatchDelay": 9, '
                   '"minWorkers": 2}}, "noop": {"1.0": {"batchSize": 3, "minWorkers": 2}}}\n'
                   "number_of_netty_threads=8\n")
    with ServerProcess(tmp_path / "log", ts_config=cfg, enable_model_api=False) as srv:
        srv.wait_ready(models=("fast", "noop"))
        d = srv.management.get("/models/fast").json()[0]
        assert (d["batchSize"], d["maxBatchDelay"], len(d["workers"])) == (3, 9, 2)
        # The archive's model-config.yaml (batchSize 1, minWorkers 1) outranks `models=`,
        # as in TorchServe.
        d = srv.management.get("/models/noop").json()[0]
        assert (d["batchSize"], len(d["workers"])) == (1, 1)
        assert srv.management.get("/models/minilm").status_code == 404
        assert "number_of_netty_threads is a TorchServe setting" in srv.log()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # Token authorization off: a start that got far enough would write key_file.json in ROOT.
    return subprocess.run([sys.executable, "-m", "serving", "start", "--disable-token-auth",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_bad_config_value_stops_start_up_with_a_clear_message(tmp_path: Path):
    cfg = tmp_path / "config.properties"
    cfg.write_text("job_queue_size=lots\nworkers_per_modle=2\n")
    result = run_cli("--ts-config", str(cfg))
    assert result.returncode == 2
    assert "job_queue_size" in result.stderr and "(got 'lots')" in result.stderr


def test_unknown_keys_are_warned_about_and_the_server_serves(default_store: Path,
                                                             tmp_path: Path):
    """TorchServe ignores keys it does not know: a file written for it starts here too."""
    cfg = tmp_path / "config.properties"
    cfg.write_text(f"model_store={default_store}\nload_models=noop.mar\n"
                   "python=/usr/bin/python3\ndebug=false\nvmargs=-Xmx4g\n"
                   "number_of_netty_threads=4\nnetty_client_threads=2\n"
                   "workers_per_modle=2\ngrpc_some_future_key=1\n")
    with ServerProcess(tmp_path / "log", ts_config=cfg, enable_model_api=False) as srv:
        srv.wait_ready(models=("noop",))
        assert srv.inference.post("/predictions/noop", json={}).json() == {"ok": True}
        log = srv.log()
        for key in ("workers_per_modle", "grpc_some_future_key"):
            lines = [line for line in log.splitlines() if f"unknown key {key!r}" in line]
            assert len(lines) == 1 and "WARNING" in lines[0], log[-3000:]
        for key in ("python", "debug", "vmargs", "number_of_netty_threads",
                    "netty_client_threads"):
            assert f"{key} is a TorchServe setting with no effect here" in log
            assert f"unknown key {key!r}" not in log


@pytest.mark.parametrize(("models", "needle"), [
    ('{"noop": {"1.0": {"marName": "noop.mar", "batchsize": 8}}}',
     "models: noop/1.0: unknown key(s) batchsize"),
    ('{"noop": {"1.0": {"marName": "noop.mar", "batchSize": "eight"}}}',
     "models: noop/1.0: batchSize"),
])
def test_bad_models_json_stops_start_up(tmp_path: Path, models: str, needle: str):
    cfg = tmp_path / "config.properties"
    cfg.write_text(f"model_store={tmp_path}\nmodels={models}\n")
    result = run_cli("--ts-config", str(cfg), "--inference-address",
                     f"http://127.0.0.1:{free_port()}", "--management-address",
                     f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert needle in result.stderr


def test_busy_port_is_a_clear_error(tmp_path: Path):
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        result = run_cli("--inference-address", f"http://127.0.0.1:{port}",
                         "--management-address", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert f"cannot listen on http://127.0.0.1:{port}" in result.stderr


def test_unloadable_startup_model_does_not_take_the_server_down(default_store: Path,
                                                                 tmp_path: Path):
    with ServerProcess(tmp_path / "log", "--models", "noop.mar,missing.mar",
                       model_store=default_store) as srv:
        srv.wait_ready(models=("noop",))
        assert "could not load missing.mar" in srv.log()
        assert srv.inference.post("/predictions/noop", json={}).status_code == 200

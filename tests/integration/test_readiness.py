"""Readiness (/ping) and liveness (/live) on a real server, and the workers' process group:
Ctrl-C drains instead of interrupting a batch, and no worker outlives a killed gateway."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.archives import build_mar
from tests.support.polling import wait_for
from tests.support.processes import gone
from tests.support.server import ServerProcess, free_port


def gated(store: Path, tmp_path: Path, name: str, min_workers: int) -> tuple[Path, Path]:
    """An archive whose workers load only while `gate` exists; returns (gate, started_dir)."""
    gate, started = tmp_path / f"{name}-gate", tmp_path / f"{name}-started"
    started.mkdir()
    build_mar(store, name, "gated_handler.py",
              config=f"minWorkers: {min_workers}\nbatchSize: 1\nstartupTimeout: 600\n"
                     f"gate: {gate}\nstarted_dir: {started}\nledger: {tmp_path / name}.log\n")
    return gate, started


def probe(srv: ServerProcess) -> tuple[int, dict[str, Any], int]:
    ping = srv.inference.get("/ping")
    return ping.status_code, ping.json(), srv.inference.get("/live").status_code


def test_ping_is_503_while_start_up_models_load_and_live_is_200(store: Path, tmp_path: Path):
    gate, started = gated(store, tmp_path, "loader", 1)
    with ServerProcess(tmp_path / "log", "--models", "loader.mar", model_store=store) as srv:
        wait_for(lambda: any(started.iterdir()), what="the worker to start loading")
        assert probe(srv) == (503, {"status": "Loading"}, 200)
        gate.touch()
        wait_for(lambda: srv.inference.get("/ping").status_code == 200, what="readiness")
        assert probe(srv) == (200, {"status": "Healthy"}, 200)


def test_ping_names_the_model_short_of_workers_through_a_restart(store: Path, tmp_path: Path):
    gate, started = gated(store, tmp_path, "duo", 2)
    gate.touch()
    with ServerProcess(tmp_path / "log", "--models", "duo.mar", model_store=store) as srv:
        srv.wait_ready(models=("duo",))
        assert probe(srv) == (200, {"status": "Healthy"}, 200)
        pids = [w["pid"] for w in srv.management.get("/models/duo").json()[0]["workers"]]
        gate.unlink()  # the replacement will stay loading until the gate is back
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: len(list(started.iterdir())) == 3, what="the replacement to load")
        status, body, live = probe(srv)
        assert (status, live) == (503, 200)
        assert body == {"status": "Unhealthy", "models": {"duo/1.0": {"ready": 1, "minimum": 2}}}
        # Not ready for new traffic, yet what reaches it is served by the READY worker.
        r = srv.inference.post("/predictions/duo", json={"tag": "during"})
        assert r.status_code == 200 and r.json()["pid"] == pids[1]
        gate.touch()
        wait_for(lambda: srv.inference.get("/ping").status_code == 200, what="readiness")


def test_ping_during_an_asynchronous_registration(store: Path, tmp_path: Path):
    gate, started = gated(store, tmp_path, "late", 1)
    with ServerProcess(tmp_path / "log", model_store=store) as srv:
        srv.wait_ready()
        assert probe(srv) == (200, {"status": "Healthy"}, 200)  # no model: nothing is short
        r = srv.management.post("/models", params={"url": "late.mar", "synchronous": "false"})
        assert r.status_code == 202, r.text
        wait_for(lambda: any(started.iterdir()), what="the worker to start loading")
        assert probe(srv) == (503, {"status": "Unhealthy",
                                    "models": {"late/1.0": {"ready": 0, "minimum": 1}}}, 200)
        gate.touch()
        wait_for(lambda: srv.inference.get("/ping").status_code == 200, what="readiness")


def test_live_needs_no_token_and_ping_still_does(store: Path, tmp_path: Path):
    with ServerProcess(tmp_path / "log", model_store=store, token_auth=True) as srv:
        srv.wait_ready()
        assert srv.inference.get("/live").json() == {"status": "Alive"}
        assert srv.inference.get("/ping").status_code == 401
        assert srv.management.get("/live").status_code == 401  # only the inference API has it
        # The images' HEALTHCHECK: `python -m serving.probe`, with the key file for /ping.
        url = f"http://127.0.0.1:{srv.inference_port}"

        def probe_exit(*args: str) -> int:
            return subprocess.run([sys.executable, "-m", "serving.probe", *args, "--url", url],
                                  capture_output=True, timeout=60).returncode

        assert probe_exit("live") == 0
        assert probe_exit("ready", "--key-file", str(srv.key_file)) == 0
        assert probe_exit("ready", "--key-file", str(tmp_path / "none.json")) == 1  # 401
        assert subprocess.run([sys.executable, "-m", "serving.probe", "live", "--url",
                               f"http://127.0.0.1:{free_port()}"],
                              capture_output=True, timeout=60).returncode == 1  # no server


def test_ctrl_c_drains_a_running_batch(store: Path, tmp_path: Path):
    gate, _ = gated(store, tmp_path, "busy", 1)
    gate.touch()
    ledger = tmp_path / "busy.log"
    with ServerProcess(tmp_path / "log", "--models", "busy.mar", model_store=store) as srv:
        srv.wait_ready(models=("busy",))
        (worker,) = srv.management.get("/models/busy").json()[0]["workers"]
        # A session of its own: the terminal's SIGINT (sent to the foreground process group,
        # the gateway's) never reaches it.
        assert os.getpgid(worker["pid"]) != os.getpgid(srv.proc.pid)
        answer: list[httpx.Response] = []
        client = threading.Thread(target=lambda: answer.append(srv.inference.post(
            "/predictions/busy", json={"tag": "running", "sleep": 3})))
        client.start()
        wait_for(ledger.exists, what="the batch to run")
        os.killpg(srv.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        client.join(timeout=120)
        assert answer and answer[0].status_code == 200, answer
        assert answer[0].json() == {"pid": worker["pid"], "tag": "running"}
        assert srv.proc.wait(timeout=60) == 0
        wait_for(lambda: gone(worker["pid"]), timeout=10, what="the worker to exit")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux prctl")
def test_workers_die_with_a_killed_gateway(store: Path, tmp_path: Path):
    gate, _ = gated(store, tmp_path, "orphan", 2)
    gate.touch()
    ledger = tmp_path / "orphan.log"
    with ServerProcess(tmp_path / "log", "--models", "orphan.mar", model_store=store) as srv:
        srv.wait_ready(models=("orphan",))
        pids = [w["pid"] for w in srv.management.get("/models/orphan").json()[0]["workers"]]
        def doomed() -> None:
            with contextlib.suppress(httpx.TransportError):  # the gateway dies under it
                srv.inference.post("/predictions/orphan", json={"sleep": 300})

        threading.Thread(target=doomed, daemon=True).start()
        wait_for(ledger.exists, what="a batch to run")
        srv.proc.kill()  # the gateway alone, as the OOM killer would
        srv.proc.wait(timeout=30)
        # One is idle, one sleeps in its handler for minutes: both go with the gateway.
        wait_for(lambda: all(gone(p) for p in pids), timeout=20, what="the workers to die")

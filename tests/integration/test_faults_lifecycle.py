"""Shutdown under faults on a real server: bounded drain, a closed management API while
draining, and SIGTERM while models are still loading."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.archives import build_mar
from tests.support.polling import wait_for, wait_queued
from tests.support.processes import gone
from tests.support.server import ServerProcess

HANDLER_SLEEP_S = 120  # far longer than any bound the tests check



def test_shutdown_answers_running_requests_503_after_drain_timeout_and_closes_management(
        store: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    build_mar(store, "stuck", "slow_handler.py",
              config=f"minWorkers: 1\nbatchSize: 1\nmaxInflightBatches: 1\n"
                     f"responseTimeout: {HANDLER_SLEEP_S * 2}\n"
                     f"ledger: {ledger}\n")
    cfg = tmp_path / "config.properties"
    cfg.write_text("drain_timeout=8\n")
    with ServerProcess(tmp_path / "log", "--models", "stuck.mar", model_store=store,
                       ts_config=cfg) as srv:
        srv.wait_ready(models=("stuck",))
        (worker,) = srv.management.get("/models/stuck").json()[0]["workers"]
        url = f"http://127.0.0.1:{srv.inference_port}/predictions/stuck"

        async def scenario() -> tuple[list[tuple[int, dict[str, Any]]], dict[str, int]]:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
                async def post(order: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                    async with s.post(url, json=order) as r:
                        return r.status, await r.json(content_type=None)

                running = asyncio.create_task(post({"tag": "running",
                                                    "sleep": HANDLER_SLEEP_S}))
                await asyncio.to_thread(wait_for, ledger.exists, what="the handler to run")
                queued = asyncio.create_task(post({"tag": "queued"}))
                await asyncio.to_thread(wait_queued, srv, "stuck", 1)  # behind the running one
                srv.proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(
                    wait_for, lambda: srv.inference.get("/ping").status_code == 503,
                    what="drain to start")
                mgmt = srv.management
                during = {
                    "register": mgmt.post("/models", params={"url": "stuck.mar",
                                                             "model_name": "again"}),
                    "scale": mgmt.put("/models/stuck", params={"min_worker": 2}),
                    "set-default": mgmt.put("/models/stuck/1.0/set-default"),
                    "unregister": mgmt.delete("/models/stuck"),
                    "describe": mgmt.get("/models/stuck"),
                    "list": mgmt.get("/models"),
                }
                refused = during["register"].json()
                assert refused["code"] == 503 and "shutting down" in refused["message"]
                answers = await asyncio.gather(running, queued)
                return answers, {k: r.status_code for k, r in during.items()}

        answers, during = asyncio.run(scenario())
        assert during == {"register": 503, "scale": 503, "set-default": 503,
                          "unregister": 503, "describe": 200, "list": 200}
        (running_status, running_body), (queued_status, _) = answers
        # The handler still sleeps: after drain_timeout its request is answered, not awaited.
        assert running_status == 503
        assert running_body["type"] == "ServiceUnavailableException"
        assert running_body["message"] == "Server is shutting down"
        assert queued_status == 503
        # Exits 0 long before the handler's sleep (or its response timeout) would end.
        assert srv.proc.wait(timeout=HANDLER_SLEEP_S / 2) == 0
        wait_for(lambda: gone(worker["pid"]), timeout=10, what="the worker to be gone")
        assert json.loads(ledger.read_text().splitlines()[0])["tag"] == "running"


def test_sigterm_while_models_load_stops_cleanly(store: Path, tmp_path: Path) -> None:
    started = tmp_path / "initialize-started"
    build_mar(store, "sleepy", "slow_init_handler.py",
              config=f"minWorkers: 1\nstartupTimeout: {HANDLER_SLEEP_S * 2}\n"
                     f"init_sleep: {HANDLER_SLEEP_S}\nstarted_marker: {started}\n")
    temp = tmp_path / "tmp"  # the server's work dir is made here
    temp.mkdir()
    with ServerProcess(tmp_path / "log", "--models", "sleepy.mar", model_store=store,
                       env={"TMPDIR": str(temp)}) as srv:
        wait_for(started.exists, what="the handler's initialize to start")
        worker_pid = int(started.read_text())
        assert [p.name for p in temp.iterdir() if p.name.startswith("serving-")]
        srv.proc.send_signal(signal.SIGTERM)
        # Exits 0 long before initialize (or the startup timeout) would end.
        assert srv.proc.wait(timeout=HANDLER_SLEEP_S / 2) == 0
        assert "Stopped while loading models" in srv.log()
        wait_for(lambda: gone(worker_pid), timeout=10, what="the loading worker to be gone")
        assert not [p.name for p in temp.iterdir() if p.name.startswith("serving-")]

"""Worker placement and life cycle on a real server: affinity, kill -9, hangs, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import psutil
import pytest

from serving.workers.pinning import format_cpulist
from tests.support.archives import build_mar
from tests.support.ledger import ledger_lines
from tests.support.polling import wait_for, wait_queued
from tests.support.processes import gone
from tests.support.server import ServerProcess


def workers(server: ServerProcess, name: str) -> list[dict]:
    return server.management.get(f"/models/{name}").json()[0]["workers"]


@pytest.fixture(autouse=True)
def no_models_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with no model on the module's server: pinned workers a test leaves
    behind hold cores that the placement tests count on (order independence)."""
    yield
    if "server" in request.fixturenames:
        server: ServerProcess = request.getfixturevalue("server")
        for model in server.management.get("/models").json()["models"]:
            server.management.delete(f"/models/{model['modelName']}").raise_for_status()


def test_started_workers_run_on_their_planned_cores(server: ServerProcess, store: Path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    build_mar(store, "placed", "slow_handler.py",
              config="minWorkers: 2\nplacement:\n  cores_per_worker: 1\n")
    server.management.post("/models", params={"url": "placed.mar"}).raise_for_status()
    listed = workers(server, "placed")
    assert len(listed) == 2
    cores = set()
    for w in listed:
        assert w["pinned"] is True and w["threads"] == 1 and w["numaNode"] == 0
        assert format_cpulist(os.sched_getaffinity(w["pid"])) == w["cores"]
        cores.add(w["cores"])
    assert len(cores) == 2  # never two workers on one physical core
    server.management.delete("/models/placed").raise_for_status()


def test_strict_placement_that_cannot_fit_is_refused(server: ServerProcess, store: Path):
    build_mar(store, "greedy", "slow_handler.py",
              config="minWorkers: 1\nplacement:\n  enabled: true\n  cores_per_worker: 64\n")
    r = server.management.post("/models", params={"url": "greedy.mar"})
    assert r.status_code == 503 and "cannot pin" in r.json()["message"]
    bad = build_mar(store, "typo", "slow_handler.py", config="placement:\n  cores_per_wroker: 1\n")
    r = server.management.post("/models", params={"url": bad.name})
    assert r.status_code == 400 and "cores_per_wroker" in r.json()["message"]


def test_kill_9_under_load_every_request_answered_and_worker_back(server: ServerProcess,
                                                                 store: Path, tmp_path: Path):
    ledger = tmp_path / "ledger.jsonl"
    build_mar(store, "victim", "slow_handler.py",
              config=f"minWorkers: 1\nbatchSize: 1\nledger: {ledger}\n"
                     "placement:\n  cores_per_worker: 1\n")
    server.management.post("/models", params={"url": "victim.mar"}).raise_for_status()
    (before,) = workers(server, "victim")
    url = f"http://127.0.0.1:{server.inference_port}/predictions/victim"

    async def load() -> tuple[list[dict], dict[int, tuple[int, dict]]]:
        answers: dict[int, tuple[int, dict]] = {}
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> None:
                async with s.post(url, json={"tag": i, "sleep": 0.02},
                                  timeout=aiohttp.ClientTimeout(total=60)) as r:
                    answers[i] = r.status, await r.json(content_type=None)

            async def killer() -> list[dict]:
                # Under load for sure: the worker has run ten requests, the rest wait.
                await asyncio.to_thread(wait_for, lambda: len(ledger_lines(ledger)) >= 10,
                                        "the worker running the load")
                os.kill(before["pid"], signal.SIGKILL)
                await asyncio.to_thread(wait_for, lambda: gone(before["pid"]), "the kill")
                return ledger_lines(ledger)  # all the dead worker ever ran

            ran_before_kill, *_ = await asyncio.gather(killer(), *(one(i) for i in range(120)))
        return ran_before_kill, answers

    ran_before_kill, answers = asyncio.run(load())
    (after,) = wait_for(lambda: [w for w in workers(server, "victim")
                                 if w["status"] == "READY" and w["pid"] != before["pid"]],
                        what="replacement worker")
    assert after["restarts"] == 1
    ran = [o["tag"] for o in ledger_lines(ledger)]
    assert len(ran) == len(set(ran)), "a request ran twice"
    assert len(ran_before_kill) < 120  # requests were still waiting when the worker died
    # Only the request the worker held when it died fails (none if it died between two);
    # every other one is answered 200 with its own result, by the replacement if it waited.
    died = {i for i, (status, _) in answers.items() if status != 200}
    assert len(died) <= 1
    # None lost with the worker: every request ran, except the one it held when it died,
    # which it may not have begun (killed between answering one and logging the next);
    # that one was never run again by the replacement.
    assert set(ran) | died == set(range(120))
    ran_after_kill = set(ran) - {o["tag"] for o in ran_before_kill}
    for i in died:
        assert i not in ran_after_kill
        assert answers[i][0] == 502 and answers[i][1]["type"] == "WorkerDiedException"
    waited = set(range(120)) - {o["tag"] for o in ran_before_kill}
    for i, (status, body) in answers.items():
        if status == 200:
            assert body["tag"] == i
            assert body["pid"] == (after["pid"] if i in waited else before["pid"])
    # the replacement takes the dead worker's place: same cores, same memory node
    assert (after["cores"], after["numaNode"]) == (before["cores"], before["numaNode"])
    assert after["pinned"] is True
    assert format_cpulist(os.sched_getaffinity(after["pid"])) == after["cores"]
    assert server.management.get("/models/victim").json()[0]["restarts"] == 1


def test_scaling_one_model_never_restarts_another(server: ServerProcess, store: Path):
    build_mar(store, "steady", "slow_handler.py", config="minWorkers: 1\n")
    build_mar(store, "elastic", "slow_handler.py", config="minWorkers: 1\n")
    for name in ("steady", "elastic"):
        server.management.post("/models", params={"url": f"{name}.mar"}).raise_for_status()
    steady = [w["pid"] for w in workers(server, "steady")]
    server.management.put("/models/elastic", params={"min_worker": 3, "synchronous": "true"}
                          ).raise_for_status()
    server.management.put("/models/elastic", params={"min_worker": 1, "synchronous": "true"}
                          ).raise_for_status()
    assert [w["pid"] for w in workers(server, "steady")] == steady


@pytest.fixture
def quick_ping_server(store: Path, tmp_path: Path):
    cfg = tmp_path / "config.properties"
    cfg.write_text("worker_ping_interval=0.5\nworker_ping_timeout=1\ndrain_timeout=30\n")
    build_mar(store, "frozen", "slow_handler.py",
              config="minWorkers: 1\nbatchSize: 1\nmaxInflightBatches: 1\n")
    with ServerProcess(tmp_path / "log", "--models", "frozen.mar", model_store=store,
                       ts_config=cfg) as srv:
        srv.wait_ready(models=("frozen",))
        yield srv


def test_hung_worker_is_replaced(quick_ping_server: ServerProcess):
    srv = quick_ping_server
    (before,) = workers(srv, "frozen")
    os.kill(before["pid"], signal.SIGSTOP)  # alive, but no longer reads its socket
    try:
        after = wait_for(lambda: [w for w in workers(srv, "frozen")
                                  if w["pid"] != before["pid"] and w["status"] == "READY"],
                         what="hung worker replaced")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(before["pid"], signal.SIGCONT)
    assert after[0]["restarts"] == 1
    assert "did not answer a ping" in srv.log()
    assert srv.inference.post("/predictions/frozen", json={"tag": 1}).status_code == 200


def test_sigterm_drains_in_flight_requests_and_exits_0(quick_ping_server: ServerProcess):
    srv = quick_ping_server
    url = f"http://127.0.0.1:{srv.inference_port}"
    workers_before_exit = workers(srv, "frozen")

    def not_healthy() -> httpx.Response | None:
        r = srv.inference.get("/ping")
        return r if r.status_code != 200 else None

    async def scenario():
        async with aiohttp.ClientSession() as s:
            async def post(order: dict) -> int:
                async with s.post(f"{url}/predictions/frozen", json=order) as r:
                    await r.read()
                    return r.status
            in_flight = [asyncio.create_task(post({"tag": i, "sleep": 1.5}))
                         for i in range(3)]
            await asyncio.to_thread(wait_queued, srv, "frozen", 2)  # one runs, two wait
            srv.proc.send_signal(signal.SIGTERM)
            r = await asyncio.to_thread(wait_for, not_healthy, "the server to start draining")
            ping = (r.status_code, r.json())
            late = await post({"tag": "late"})
            return await asyncio.gather(*in_flight), ping, late

    finished, ping, late = asyncio.run(scenario())
    assert finished == [200, 200, 200]  # queued and running requests all completed
    assert ping == (503, {"status": "Draining"})
    assert late == 503
    worker_pids = [w["pid"] for w in workers_before_exit]
    assert srv.proc.wait(timeout=60) == 0
    # no worker outlives the server
    wait_for(lambda: not any(psutil.pid_exists(p) for p in worker_pids), "workers gone", 10)

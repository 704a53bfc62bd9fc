"""Routing under faults, on a real server: failed starts, scale-downs under load, refused
scale-ups, queue deadlines, scaling to 0 and worker-count bounds. Every request gets exactly
one answer, no worker is left behind, and the model stays registered."""

from __future__ import annotations

import asyncio
import json
import resource
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.support.archives import build_mar
from tests.support.polling import wait_for
from tests.support.server import ServerProcess


def register(server: ServerProcess, store: Path, name: str, config: str, **params: object
             ) -> None:
    build_mar(store, name, "slow_handler.py", config=config)
    r = server.management.post("/models", params={"url": f"{name}.mar", **params})
    assert r.status_code in (200, 202), r.text


def describe(server: ServerProcess, name: str) -> dict[str, Any]:
    r = server.management.get(f"/models/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json()[0])


def statuses(server: ServerProcess, name: str) -> list[str]:
    return [w["status"] for w in describe(server, name)["workers"]]



def ping(server: ServerProcess) -> int:
    return server.inference.get("/ping").status_code


def ledger_tags(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [json.loads(line).get("tag") for line in path.read_text().splitlines()]


async def post(session: aiohttp.ClientSession, url: str, order: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with session.post(url, json=order, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=60)) as r:
        return r.status, await r.json(content_type=None)


def url(server: ServerProcess, name: str) -> str:
    return f"http://127.0.0.1:{server.inference_port}/predictions/{name}"


def unregister(server: ServerProcess, name: str) -> None:
    server.management.delete(f"/models/{name}").raise_for_status()


def test_yaml_date_in_model_config_is_a_400_naming_the_key(server: ServerProcess,
                                                           store: Path):
    build_mar(store, "dated", "slow_handler.py",
              config="minWorkers: 1\nmetadata:\n  released: 2024-05-01\n")
    r = server.management.post("/models", params={"url": "dated.mar"})
    assert r.status_code == 400, r.text
    assert "metadata.released" in r.json()["message"] and "quote" in r.json()["message"]
    assert server.management.get("/models/dated").status_code == 404
    assert ping(server) == 200


def test_scale_down_while_workers_start_keeps_the_model_and_its_target(
        server: ServerProcess, store: Path):
    # A retired worker may finish its batch for up to response_timeout + 5 s; one that is
    # still starting holds none, and the scale-down must not wait that out for it.
    register(server, store, "flux", "batchSize: 1\n", initial_workers=3, synchronous="false",
             response_timeout=3600)
    assert "STARTING" in statuses(server, "flux")

    async def scenario() -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        async with aiohttp.ClientSession() as s:
            # Queued while the workers load: none may go to a worker being retired.
            waiting = [asyncio.create_task(post(s, url(server, "flux"), {"sleep": 0.2,
                                                                         "tag": i}))
                       for i in range(6)]
            r = await asyncio.to_thread(server.management.put, "/models/flux",
                                        params={"min_worker": 1, "synchronous": "true"})
            return r.status_code, await asyncio.gather(*waiting)

    scaled, answers = asyncio.run(scenario())
    assert scaled == 200
    assert [status for status, _ in answers] == [200] * 6
    wait_for(lambda: statuses(server, "flux") == ["READY"], "one READY worker")
    described = describe(server, "flux")  # still registered, at the target asked for
    assert described["minWorkers"] == 1 and "lastError" not in described
    assert server.inference.post("/predictions/flux", json={"tag": 1}).status_code == 200
    assert ping(server) == 200
    unregister(server, "flux")


def test_scale_down_while_requests_run_answers_them_all(server: ServerProcess, store: Path):
    register(server, store, "busy", "batchSize: 1\n", initial_workers=3)

    async def scenario() -> list[tuple[int, dict[str, Any]]]:
        async with aiohttp.ClientSession() as s:
            running = [asyncio.create_task(post(s, url(server, "busy"), {"sleep": 2, "tag": i}))
                       for i in range(6)]
            await asyncio.to_thread(wait_for, lambda: all(
                w["busy"] for w in describe(server, "busy")["workers"]), "3 busy workers")
            r = await asyncio.to_thread(server.management.put, "/models/busy",
                                        params={"min_worker": 1, "synchronous": "true"})
            assert r.status_code == 200, r.text
            return await asyncio.gather(*running)

    answers = asyncio.run(scenario())
    assert [status for status, _ in answers] == [200] * 6  # none lost to the scale-down
    assert statuses(server, "busy") == ["READY"] and describe(server, "busy")["minWorkers"] == 1
    assert server.inference.post("/predictions/busy", json={"tag": "after"}).status_code == 200
    assert ping(server) == 200
    unregister(server, "busy")


def test_refused_scale_up_leaves_ping_healthy(server: ServerProcess, store: Path):
    register(server, store, "strict",
             "batchSize: 1\nplacement:\n  enabled: true\n  cores_per_worker: 1\n",
             initial_workers=1)
    cores = psutil.cpu_count(logical=False) or 1
    r = server.management.put("/models/strict", params={
        "min_worker": min(cores + 1, 8), "synchronous": "true"})
    assert r.status_code == 503 and "cannot pin" in r.json()["message"], r.text
    assert ping(server) == 200  # the target is what runs, not what was refused
    described = describe(server, "strict")
    assert described["minWorkers"] == 1 and statuses(server, "strict") == ["READY"]
    unregister(server, "strict")


def test_a_start_that_hits_emfile_fails_cleanly_and_the_model_keeps_serving(
        server: ServerProcess, store: Path):
    register(server, store, "crowded", "batchSize: 1\n", initial_workers=1)
    gateway = psutil.Process(server.proc.pid)
    assert ping(server) == 200 and describe(server, "crowded")  # connections are open now
    limits = gateway.rlimit(resource.RLIMIT_NOFILE)
    # Below what is open: no new descriptor, even if a few close meanwhile.
    gateway.rlimit(resource.RLIMIT_NOFILE, (gateway.num_fds() - 4, limits[1]))
    try:
        r = server.management.put("/models/crowded",
                                  params={"min_worker": 2, "synchronous": "true"})
    finally:
        gateway.rlimit(resource.RLIMIT_NOFILE, limits)
    assert r.status_code == 500 and "Too many open files" in r.json()["message"], r.text
    assert statuses(server, "crowded") == ["READY"]  # no phantom STARTING worker
    assert describe(server, "crowded")["minWorkers"] == 1
    assert ping(server) == 200
    assert server.inference.post("/predictions/crowded", json={"tag": 1}).status_code == 200
    r = server.management.put("/models/crowded", params={"min_worker": 2, "synchronous": "true"})
    assert r.status_code == 200 and statuses(server, "crowded") == ["READY", "READY"]
    unregister(server, "crowded")


def test_queue_deadline_answers_504_and_the_request_never_runs(server: ServerProcess,
                                                               store: Path, tmp_path: Path):
    ledger = tmp_path / "ledger.jsonl"
    register(server, store, "patient",
             f"batchSize: 1\nclientTimeoutInMills: 500\nledger: {ledger}\n", initial_workers=1)
    register(server, store, "eager", f"batchSize: 1\nledger: {ledger}\n", initial_workers=1)
    assert describe(server, "patient")["clientTimeoutInMills"] == 500

    async def scenario() -> dict[str, tuple[int, dict[str, Any]]]:
        async with aiohttp.ClientSession() as s:
            answers: dict[str, tuple[int, dict[str, Any]]] = {}
            for name in ("patient", "eager"):
                busy = asyncio.create_task(post(s, url(server, name), {"sleep": 3,
                                                                       "tag": f"{name}-busy"}))
                await asyncio.to_thread(wait_for, lambda n=name: ledger_tags(ledger).count(
                    f"{n}-busy"), "the worker to take the first request")
                header = {"x-request-timeout-ms": "300"} if name == "eager" else None
                answers[name] = await post(s, url(server, name), {"tag": f"{name}-late"},
                                           header)
                answers[f"{name}-busy-done"] = (int(busy.done()), {})
                answers[f"{name}-busy"] = await busy
            answers["bad"] = await post(s, url(server, "eager"), {"tag": "bad"},
                                        {"x-request-timeout-ms": "soon"})
            return answers

    answers = asyncio.run(scenario())
    for name in ("patient", "eager"):
        status, body = answers[name]
        assert status == 504 and body["type"] == "RequestTimeoutException", body
        assert "in the queue" in body["message"]
        assert answers[f"{name}-busy-done"][0] == 0  # answered while the worker was busy
        assert answers[f"{name}-busy"][0] == 200
    assert answers["bad"][0] == 400 and "x-request-timeout-ms" in answers["bad"][1]["message"]
    tags = ledger_tags(ledger)
    assert "patient-late" not in tags and "eager-late" not in tags  # never reached a worker
    unregister(server, "patient")
    unregister(server, "eager")


def test_scaling_to_zero_answers_queued_requests_at_once(server: ServerProcess, store: Path,
                                                         tmp_path: Path):
    ledger = tmp_path / "ledger.jsonl"
    register(server, store, "fading", f"batchSize: 1\nmaxInflightBatches: 1\nledger: {ledger}\n",
             initial_workers=1)

    async def scenario() -> tuple[Any, ...]:
        async with aiohttp.ClientSession() as s:
            busy = asyncio.create_task(post(s, url(server, "fading"), {"sleep": 3, "tag": "a"}))
            await asyncio.to_thread(wait_for, lambda: "a" in ledger_tags(ledger), "a running")
            queued = [asyncio.create_task(post(s, url(server, "fading"), {"tag": i}))
                      for i in range(3)]
            await asyncio.to_thread(wait_for, lambda: describe(server, "fading")[
                "jobQueueStatus"]["pendingRequests"] == 3, "3 queued requests")
            r = await asyncio.to_thread(server.management.put, "/models/fading",
                                        params={"min_worker": 0})
            assert r.status_code == 202, r.text
            dropped = await asyncio.gather(*queued)
            busy_done = busy.done()
            after = await post(s, url(server, "fading"), {"tag": "after"})
            return dropped, busy_done, await busy, after

    dropped, busy_done, busy, after = asyncio.run(scenario())
    assert [status for status, _ in dropped] == [503] * 3
    assert all(body["type"] == "ServiceUnavailableException" for _, body in dropped)
    assert not busy_done        # answered at once, not after the running batch
    assert busy[0] == 200       # the running batch finished on its retiring worker
    assert after[0] == 503      # 0 workers: 503 at once
    wait_for(lambda: describe(server, "fading")["workers"] == [], "the worker to stop")
    r = server.management.put("/models/fading", params={"min_worker": 1, "synchronous": "true"})
    assert r.status_code == 200
    assert server.inference.post("/predictions/fading", json={"tag": "back"}).status_code == 200
    unregister(server, "fading")


@pytest.mark.parametrize("where", ["initial_workers", "min_worker", "max_worker",
                                   "minWorkers", "maxWorkers"])
def test_worker_counts_are_bounded(server: ServerProcess, store: Path, where: str):
    name = f"many-{where.lower()}"
    config = "batchSize: 1\n"
    if where in ("minWorkers", "maxWorkers"):
        config += f"{where}: 100000\n"
    build_mar(store, name, "slow_handler.py", config=config)
    params: dict[str, Any] = {"url": f"{name}.mar", "initial_workers": 1}
    if where == "initial_workers":
        params["initial_workers"] = 100000
    elif where == "minWorkers":
        params.pop("initial_workers")
    r = server.management.post("/models", params=params)
    if where in ("min_worker", "max_worker"):
        assert r.status_code == 200, r.text
        r = server.management.put(f"/models/{name}", params={where: 100000})
    assert r.status_code == 400, r.text
    assert where in r.json()["message"] and "max_workers_per_model" in r.json()["message"]
    if where in ("min_worker", "max_worker"):  # registered; the refused PUT changed nothing
        described = describe(server, name)
        assert (described["minWorkers"], len(described["workers"])) == (1, 1)
        unregister(server, name)
    assert server.management.get(f"/models/{name}").status_code == 404
    assert ping(server) == 200


@pytest.fixture(scope="module")
def small_queue_server(store: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("small-queue")
    cfg = tmp / "config.properties"
    cfg.write_text("job_queue_max_bytes=3000\n")
    with ServerProcess(tmp / "log", model_store=store, ts_config=cfg) as srv:
        srv.wait_ready()
        yield srv


def test_queue_bytes_bound_answers_503_with_retry_after(small_queue_server: ServerProcess,
                                                        store: Path, tmp_path: Path):
    srv = small_queue_server
    ledger = tmp_path / "ledger.jsonl"
    register(srv, store, "bulky", f"batchSize: 1\nmaxInflightBatches: 1\nledger: {ledger}\n",
             initial_workers=1)
    pad = "x" * 1000

    async def scenario() -> tuple[Any, ...]:
        async with aiohttp.ClientSession() as s:
            busy = asyncio.create_task(post(s, url(srv, "bulky"), {"sleep": 3, "tag": "a"}))
            await asyncio.to_thread(wait_for, lambda: "a" in ledger_tags(ledger), "a running")
            queued = [asyncio.create_task(post(s, url(srv, "bulky"), {"tag": i, "pad": pad}))
                      for i in range(2)]
            await asyncio.to_thread(wait_for, lambda: describe(srv, "bulky")[
                "jobQueueStatus"]["pendingRequests"] == 2, "2 queued requests")
            async with s.post(url(srv, "bulky"), json={"tag": "over", "pad": pad}) as r:
                over = (r.status, r.headers.get("Retry-After"), await r.json())
            return over, await asyncio.gather(busy, *queued)

    over, rest = asyncio.run(scenario())
    assert over[0] == 503 and over[1] == "1" and "job_queue_max_bytes" in over[2]["message"]
    assert [status for status, _ in rest] == [200, 200, 200]

"""Batching, admission, deadlines, cancellation and worker death: every request is answered
exactly once, on a real server."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.support.archives import build_mar
from tests.support.ledger import ledger_lines
from tests.support.polling import wait_for, wait_held, wait_queued
from tests.support.server import ServerProcess


def register(server: ServerProcess, store: Path, name: str, config: str, **params: object
             ) -> None:
    build_mar(store, name, "slow_handler.py", config=config)
    r = server.management.post("/models", params={"url": f"{name}.mar", **params})
    assert r.status_code == 200, r.text


async def post(session: aiohttp.ClientSession, url: str, order: dict,
               timeout: float = 60) -> tuple[int, dict, dict]:
    async with session.post(url, json=order, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


def base(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.inference_port}"


def test_requests_are_batched_up_to_batch_size(server: ServerProcess, store: Path):
    # 2 s: four requests sent together always make one batch, however loaded the box
    register(server, store, "batch4", "batchSize: 4\nmaxBatchDelay: 2000\n")

    async def scenario():
        async with aiohttp.ClientSession() as s:
            four = await asyncio.gather(*(post(s, f"{base(server)}/predictions/batch4",
                                               {"tag": i}) for i in range(4)))
            alone = await post(s, f"{base(server)}/predictions/batch4", {"tag": "x"})
        return four, alone

    four, alone = asyncio.run(scenario())
    assert all(status == 200 for status, _, _ in four)
    assert {body["batch"] for _, _, body in four} == {4}
    assert sorted(body["tag"] for _, _, body in four) == [0, 1, 2, 3]
    # A lone request is not held forever: its batch closes after maxBatchDelay.
    assert alone[0] == 200 and alone[2]["batch"] == 1 and alone[2]["tag"] == "x"


def test_full_queue_answers_503_at_once(server: ServerProcess, store: Path):
    register(server, store, "tiny-queue", "batchSize: 1\njobQueueSize: 2\n")
    url = f"{base(server)}/predictions/tiny-queue"

    async def scenario():
        async with aiohttp.ClientSession() as s:
            busy = asyncio.create_task(post(s, url, {"sleep": 3, "tag": "busy"}))
            await asyncio.to_thread(wait_queued, server, "tiny-queue", 0)  # the worker has it
            # The first is sent ahead to wait in the busy worker's socket, the second in the
            # queue: both wait, and the bound counts both (jobQueueSize 2: full).
            queued = [asyncio.create_task(post(s, url, {"tag": i})) for i in range(2)]
            await asyncio.to_thread(wait_held, server, "tiny-queue", 2)
            await asyncio.to_thread(wait_queued, server, "tiny-queue", 2)  # the queue is full
            rejected = await post(s, url, {"tag": "over"})
            busy_done_when_rejected = busy.done()
            rest = await asyncio.gather(busy, *queued)
        return rejected, busy_done_when_rejected, rest

    rejected, busy_done, rest = asyncio.run(scenario())
    status, headers, body = rejected
    assert status == 503 and headers["Retry-After"] == "1"
    assert body["type"] == "ServiceUnavailableException" and "queue is full" in body["message"]
    assert not busy_done  # the 503 came while the worker was still busy: nothing waited
    assert [r[0] for r in rest] == [200, 200, 200]


def test_response_timeout_is_504_and_the_worker_is_replaced(server: ServerProcess,
                                                            store: Path):
    register(server, store, "deadline", "batchSize: 1\n", response_timeout=1)
    before = server.management.get("/models/deadline").json()[0]["workers"][0]["pid"]
    r = server.inference.post("/predictions/deadline", json={"sleep": 30})
    assert r.status_code == 504
    assert r.json()["type"] == "RequestTimeoutException"

    def answered() -> httpx.Response | None:
        r = server.inference.post("/predictions/deadline", json={"tag": "after"})
        return r if r.status_code == 200 else None

    ok = wait_for(answered, "a replacement answering")
    assert ok.json()["pid"] != before
    described = server.management.get("/models/deadline").json()[0]
    assert described["restarts"] == 1  # the stuck worker was killed and replaced, once


def test_disconnected_client_is_never_run(server: ServerProcess, store: Path, tmp_path: Path):
    ledger = tmp_path / "ledger.jsonl"
    register(server, store, "ledgered", f"batchSize: 1\nledger: {ledger}\n")
    url = f"{base(server)}/predictions/ledgered"

    async def scenario():
        async with aiohttp.ClientSession() as s:
            busy = asyncio.create_task(post(s, url, {"sleep": 2, "tag": "busy"}))
            await asyncio.to_thread(wait_queued, server, "ledgered", 0)  # the worker has it
            # "ahead" is sent to the busy worker's socket (its slow batches keep the depth at
            # 2: the running one and one sent ahead); "queued" and "gone" wait in the queue.
            ahead = asyncio.create_task(post(s, url, {"tag": "ahead"}))
            queued = asyncio.create_task(post(s, url, {"tag": "queued"}))
            await asyncio.to_thread(wait_queued, server, "ledgered", 2)  # both wait
            gone = asyncio.create_task(post(s, url, {"tag": "gone"}))
            await asyncio.to_thread(wait_queued, server, "ledgered", 3)  # it waits its turn
            gone.cancel()  # the client hangs up
            with pytest.raises(asyncio.CancelledError):
                await gone
            kept = await post(s, url, {"tag": "kept"})
            return kept, await busy, await ahead, await queued

    answers = asyncio.run(scenario())
    assert [a[0] for a in answers] == [200] * 4
    tags = [o.get("tag") for o in ledger_lines(ledger)]
    assert tags == ["busy", "ahead", "queued", "kept"]  # "gone" never reached the handler


def test_a_client_gone_while_its_batch_waits_in_the_workers_socket_is_left_out(
        server: ServerProcess, store: Path, tmp_path: Path):
    ledger = tmp_path / "ledger.jsonl"
    register(server, store, "ahead", f"batchSize: 1\nledger: {ledger}\n")
    url = f"{base(server)}/predictions/ahead"

    async def scenario():
        async with aiohttp.ClientSession() as s:
            busy = asyncio.create_task(post(s, url, {"sleep": 2, "tag": "busy"}))
            await asyncio.to_thread(wait_queued, server, "ahead", 0)  # the worker has it
            gone = asyncio.create_task(post(s, url, {"tag": "gone"}))
            await asyncio.to_thread(wait_held, server, "ahead", 2)  # sent ahead
            after = asyncio.create_task(post(s, url, {"tag": "after"}))
            await asyncio.to_thread(wait_queued, server, "ahead", 2)  # "gone" and "after" wait
            gone.cancel()  # the client hangs up while its batch waits in the socket
            with pytest.raises(asyncio.CancelledError):
                await gone
            return await busy, await after

    busy, after = asyncio.run(scenario())
    assert busy[0] == 200 and after[0] == 200
    tags = [o.get("tag") for o in ledger_lines(ledger)]
    assert tags == ["busy", "after"]  # the worker left "gone" out of the batch it started


def test_worker_death_answers_its_requests_at_once_and_others_continue(
        server: ServerProcess, store: Path):
    register(server, store, "mortal", "batchSize: 1\n", initial_workers=1)
    url = f"{base(server)}/predictions/mortal"

    first = server.management.get("/models/mortal").json()[0]["workers"][0]["pid"]

    async def scenario():
        async with aiohttp.ClientSession() as s:
            # The fatal request is sent ahead to the worker running "busy"; three more queue
            # behind. When "busy" is answered the worker starts the fatal one and the first
            # of the three is sent ahead: it never starts there, so it must go back to the
            # queue and, like the other two, wait for the replacement, not fail.
            busy = asyncio.create_task(post(s, url, {"sleep": 3, "tag": "busy"}))
            await asyncio.to_thread(wait_queued, server, "mortal", 0)
            dying = asyncio.create_task(post(s, url, {"exit": True}))
            await asyncio.to_thread(wait_held, server, "mortal", 2)
            waiting = [asyncio.create_task(post(s, url, {"tag": i})) for i in range(3)]
            await asyncio.to_thread(wait_queued, server, "mortal", 4)  # the fatal one too
            return await busy, await dying, await asyncio.gather(*waiting)

    busy, dying, waiting = asyncio.run(scenario())
    assert busy[0] == 200 and busy[2]["pid"] == first
    assert dying[0] == 502 and dying[2]["type"] == "WorkerDiedException"
    assert [w[0] for w in waiting] == [200, 200, 200]
    assert first not in {w[2]["pid"] for w in waiting}  # the replacement served them
    assert server.management.get("/models/mortal").json()[0]["restarts"] == 1


def test_a_timeout_hands_the_batches_sent_ahead_to_the_replacement(server: ServerProcess,
                                                                  store: Path, tmp_path: Path):
    """Three batches in flight to one worker with room for a fourth (`maxInflightBatches:
    4`, so routing still lists it); the running one passes responseTimeout: it alone gets
    504, the two waiting in the killed worker's socket never started and run once on the
    replacement, never handed back to the retiring worker (and the gateway keeps serving)."""
    ledger = tmp_path / "ledger.jsonl"
    register(server, store, "deep", f"batchSize: 1\nmaxInflightBatches: 4\nledger: {ledger}\n",
             response_timeout=2)
    url = f"{base(server)}/predictions/deep"
    first = server.management.get("/models/deep").json()[0]["workers"][0]["pid"]

    async def scenario():
        async with aiohttp.ClientSession() as s:
            stuck = asyncio.create_task(post(s, url, {"sleep": 30, "tag": "stuck"}))
            await asyncio.to_thread(wait_queued, server, "deep", 0)
            ahead = [asyncio.create_task(post(s, url, {"tag": i})) for i in range(2)]
            await asyncio.to_thread(wait_held, server, "deep", 3)
            return await stuck, await asyncio.gather(*ahead)

    stuck, ahead = asyncio.run(scenario())
    assert stuck[0] == 504 and stuck[2]["type"] == "RequestTimeoutException"
    assert [a[0] for a in ahead] == [200, 200]
    assert first not in {a[2]["pid"] for a in ahead}  # the replacement ran them
    tags = Counter(o.get("tag") for o in ledger_lines(ledger))
    assert tags == {"stuck": 1, 0: 1, 1: 1}  # each ran exactly once


def test_several_workers_run_batches_in_parallel(server: ServerProcess, store: Path):
    register(server, store, "pair", "batchSize: 1\n", initial_workers=2)
    url = f"{base(server)}/predictions/pair"

    async def scenario():
        async with aiohttp.ClientSession() as s:
            return await asyncio.gather(*(post(s, url, {"sleep": 1, "tag": i})
                                          for i in range(2)))

    results = asyncio.run(scenario())
    assert {r[0] for r in results} == {200}
    assert len({r[2]["pid"] for r in results}) == 2  # one batch per worker


def expected_answer(i: int, batch_of: dict[int, str], runs: dict[str, list[dict]]
                    ) -> tuple[int, str | None]:
    """The status and error type request `i` must get, from what the handler's ledger says
    happened to it: never run (refused at admission), or run in a batch that exited, failed
    (the first such order in the batch decides: the handler stops there) or succeeded."""
    if i not in batch_of:
        return 503, "ServiceUnavailableException"
    for order in runs[batch_of[i]]:
        if order.get("exit"):
            return 502, "WorkerDiedException"
        if order.get("fail"):
            return 503, "InternalServerException"
    return 200, None


def test_every_request_gets_exactly_one_answer_under_concurrency(server: ServerProcess,
                                                                 store: Path, tmp_path: Path):
    ledger = tmp_path / "ledger.jsonl"
    register(server, store, "mixed",
             f"batchSize: 4\nmaxBatchDelay: 5\njobQueueSize: 40\nledger: {ledger}\n",
             initial_workers=2)
    url = f"{base(server)}/predictions/mixed"
    orders = []
    for i in range(150):
        kind = ("fail" if i % 10 == 3 else "exit" if i in (40, 110) else "ok")
        orders.append({"tag": i, kind: True} if kind != "ok" else {"tag": i, "sleep": 0.01})

    async def scenario() -> dict[int, tuple[int, dict]]:
        answers: dict[int, tuple[int, dict]] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
            async def one(order: dict) -> None:
                status, _, body = await post(s, url, order)
                answers[order["tag"]] = status, body
            await asyncio.gather(*(one(o) for o in orders))
        return answers

    answers = asyncio.run(scenario())
    ran = ledger_lines(ledger)
    runs: dict[str, list[dict]] = {}
    for order in ran:
        runs.setdefault(order["_batch"], []).append(order)
    batch_of = {order["tag"]: order["_batch"] for order in ran}
    assert len(batch_of) == len(ran)  # no request reached the handler twice
    assert all(len(batch) <= 4 for batch in runs.values())
    # Each request's answer is the one its fate calls for: 200 with its own tag, 502 when its
    # worker died under it, 503 when its batch failed or the full queue refused it.
    for i in range(150):
        status, body = answers[i]
        want_status, want_type = expected_answer(i, batch_of, runs)
        assert (status, body.get("type")) == (want_status, want_type), (i, body, runs.get(
            batch_of.get(i, "")))
        if status == 200:
            assert body["tag"] == i and body["batch"] == len(runs[batch_of[i]])
    assert Counter(s for s, _ in answers.values())[200] > 0
    died = sum(expected_answer(batch[0]["tag"], batch_of, runs)[0] == 502
               for batch in runs.values())
    # The workers that died are replaced: the model becomes healthy again.
    wait_for(lambda: server.inference.get("/ping").status_code == 200, "healthy again")
    described = wait_for(lambda: [m for m in server.management.get("/models/mixed").json()
                                  if len(m["workers"]) == 2 and all(
                                      w["status"] == "READY" for w in m["workers"])],
                         "two READY workers")[0]
    assert described["restarts"] == died


def test_overlap_is_declared_by_the_handler_and_capped_by_the_config(server: ServerProcess,
                                                                      store: Path):
    build_mar(store, "overlapping", "overlap_handler.py")
    build_mar(store, "capped", "overlap_handler.py", config="maxInflightBatches: 2\n")
    build_mar(store, "plain", "slow_handler.py")
    build_mar(store, "single", "slow_handler.py", config="maxInflightBatches: 1\n")
    names = ("overlapping", "capped", "plain", "single")
    for name in names:
        server.management.post("/models", params={"url": f"{name}.mar"}).raise_for_status()
    depth = {name: server.management.get(f"/models/{name}").json()[0]["workers"][0][
        "maxInflightBatches"] for name in names}
    # TorchServe handlers do not say: the depth follows the batch times, from 2 (one sent
    # ahead) up to default_max_inflight_batches; nothing has run yet, so 2.
    assert depth == {"overlapping": 4, "capped": 2, "plain": 2, "single": 1}

    async def burst():
        url = f"{base(server)}/predictions/overlapping"
        async with aiohttp.ClientSession() as s:
            return await asyncio.gather(*(post(s, url, {}) for _ in range(40)))

    results = asyncio.run(burst())
    assert {r[0] for r in results} == {200}
    assert sorted(r[2]["n"] for r in results) == list(range(1, 41))  # each ran exactly once

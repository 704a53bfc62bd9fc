"""The error table: every error the data plane raises, driven through every front end on
this branch, on a real server with real clients.

Each front end is a small adapter: `call(session, server, model, order, *, version=None,
timeout_ms=None, give_up_after=60.0)` sends `order` (a JSON object the test handlers read)
and returns the status its client sees — `timeout_ms` is the request's own deadline (REST:
`x-request-timeout-ms`; gRPC: the call's deadline), and after `give_up_after` seconds the
client hangs up (cancels the call) and the adapter raises `asyncio.TimeoutError`. `session`
is an aiohttp session that adapters of other protocols may ignore. `status(code)` says what
that front end must answer for an error code of serving/errors.py (REST: `http_status`; gRPC:
`grpc_status_name`). A new front end (TorchServe gRPC, OIP REST/gRPC) is one more `FrontEnd`
in FRONT_ENDS: every case then runs through it too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from serving.errors import grpc_status_name, http_status
from tests.support.archives import build_mar
from tests.support.polling import wait_for, wait_queued
from tests.support.server import ServerProcess
from tests.support.tsgrpc import torchserve_stubs

MAX_REQUEST = 100_000


@dataclass(frozen=True)
class FrontEnd:
    name: str
    call: Callable[..., Awaitable[int | str]]
    status: Callable[[int], object]
    versions: bool = True  # whether a request can name a model version


def base(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.inference_port}"


def timeout_header(timeout_ms: int | None) -> dict[str, str]:
    return {"x-request-timeout-ms": str(timeout_ms)} if timeout_ms is not None else {}


async def rest_call(session: aiohttp.ClientSession, server: ServerProcess, model: str,
                    order: dict[str, Any], *, version: str | None = None,
                    timeout_ms: int | None = None, give_up_after: float = 60.0) -> int:
    path = f"/predictions/{model}" + (f"/{version}" if version else "")
    async with session.post(base(server) + path, json=order,
                            timeout=aiohttp.ClientTimeout(total=give_up_after),
                            headers=timeout_header(timeout_ms)) as r:
        await r.read()
        return r.status


async def kserve_v1_call(session: aiohttp.ClientSession, server: ServerProcess, model: str,
                         order: dict[str, Any], *, version: str | None = None,
                         timeout_ms: int | None = None, give_up_after: float = 60.0) -> int:
    assert version is None
    async with session.post(f"{base(server)}/v1/models/{model}:predict",
                            json={"instances": [order]},
                            timeout=aiohttp.ClientTimeout(total=give_up_after),
                            headers=timeout_header(timeout_ms)) as r:
        await r.read()
        return r.status


async def torchserve_grpc_call(session: aiohttp.ClientSession, server: ServerProcess,
                               model: str, order: dict[str, Any], *,
                               version: str | None = None, timeout_ms: int | None = None,
                               give_up_after: float = 60.0) -> int | str:
    """TorchServe's gRPC Predictions, with stubs from TorchServe's own protos: 200 when the
    call succeeds, else the status name."""
    ts = torchserve_stubs()
    request = ts["inference_pb2"].PredictionsRequest(
        model_name=model, model_version=version or "", input={"body": json.dumps(order).encode()})
    deadline = timeout_ms / 1000 if timeout_ms is not None else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_inference_port}") as channel:
        stub = ts["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
        try:
            # Past give_up_after, wait_for cancels the call (the client hangs up).
            await asyncio.wait_for(stub.Predictions(request, timeout=deadline), give_up_after)
        except grpc.aio.AioRpcError as e:
            return str(e.code().name)
    return 200


async def oip_rest_call(session: aiohttp.ClientSession, server: ServerProcess, model: str,
                        order: dict[str, Any], *, version: str | None = None,
                        timeout_ms: int | None = None, give_up_after: float = 60.0) -> int:
    """The order rides at the top level of the v2 request, where a handler in the default
    `handler_input: request` mode finds it (its body is the request); the deadline is the
    protocol's `timeout` parameter, in microseconds."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [0]}], **order}
    if timeout_ms is not None:
        body["parameters"] = {"timeout": timeout_ms * 1000}
    async with session.post(base(server) + path, json=body,
                            timeout=aiohttp.ClientTimeout(total=give_up_after)) as r:
        await r.read()
        return r.status


FRONT_ENDS = [
    FrontEnd("rest", rest_call, http_status),
    FrontEnd("kserve-v1", kserve_v1_call, http_status, versions=False),
    FrontEnd("oip-rest", oip_rest_call, http_status),
    FrontEnd("torchserve-grpc", torchserve_grpc_call, grpc_status_name),
]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger") / "ledger.jsonl"


@pytest.fixture(scope="module")
def server(store: Path, ledger: Path, tmp_path_factory: pytest.TempPathFactory):
    """`queue`: one worker, a queue of one; `mortal`: dies or hangs on request (restarts);
    `behaviour`: raises PredictionException with a chosen code."""
    build_mar(store, "queue", "slow_handler.py",
              config=f"batchSize: 1\njobQueueSize: 1\nmaxInflightBatches: 1\n"
                     f"ledger: {json.dumps(str(ledger))}\n")
    build_mar(store, "mortal", "slow_handler.py", config="batchSize: 1\nresponseTimeout: 2\n")
    build_mar(store, "behaviour", "behaviour_handler.py")
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text("load_models=queue.mar,mortal.mar,behaviour.mar\n"
                   f"max_request_size={MAX_REQUEST}\n")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, model_store=store, ts_config=cfg) as srv:
        srv.wait_ready(models=("queue", "mortal", "behaviour"))
        yield srv


def tags(ledger: Path) -> list[Any]:
    if not ledger.exists():
        return []
    return [json.loads(line).get("tag") for line in ledger.read_text().splitlines()]


async def wait_started(ledger: Path, tag: str) -> None:
    """Until the handler has taken the request tagged `tag` (it notes it before sleeping)."""
    for _ in range(600):
        if tag in tags(ledger):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the handler never took {tag!r}")


def ready_again(server: ServerProcess, model: str) -> None:
    """A worker that died or was killed is replaced; wait for it."""
    wait_for(lambda: server.inference.post(f"/predictions/{model}", json={},
                                           timeout=60).status_code == 200,
             f"{model} to serve again", timeout=120)


# Each case drives one error through a front end; returns the status seen and the error code
# of serving/errors.py it must map from.

async def unknown_model(fe: FrontEnd, s: aiohttp.ClientSession, server: ServerProcess,
                        ledger: Path) -> tuple[int, int]:
    return await fe.call(s, server, "no-such-model", {}), 404


async def unknown_version(fe: FrontEnd, s: aiohttp.ClientSession, server: ServerProcess,
                          ledger: Path) -> tuple[int, int]:
    if not fe.versions:
        pytest.skip(f"{fe.name} requests cannot name a version")
    return await fe.call(s, server, "behaviour", {}, version="9.9"), 404


async def too_large(fe: FrontEnd, s: aiohttp.ClientSession, server: ServerProcess,
                    ledger: Path) -> tuple[int, int]:
    return await fe.call(s, server, "behaviour", {"pad": "x" * (MAX_REQUEST + 10)}), 413


async def queue_full(fe: FrontEnd, s: aiohttp.ClientSession, server: ServerProcess,
                     ledger: Path) -> tuple[int, int]:
    busy = asyncio.create_task(fe.call(s, server, "queue", {"sleep": 2, "tag": "busy"}))
    await wait_started(ledger, "busy")  # the worker holds it; the queue is empty again
    queued = asyncio.create_task(fe.call(s, server, "queue", {"tag": "queued"}))
    await asyncio.to_thread(wait_queued, server, "queue", 1)  # it holds the queue's one slot
    refused = await fe.call(s, server, "queue", {"tag": "refused"})
    assert not busy.done(), "the queue was not full any more"
    assert await busy == 200 and await queued == 200
    return refused, 503


async def queue_deadline(fe: FrontEnd, s: aiohttp.ClientSession, server: ServerProcess,
                         ledger: Path) -> tuple[int, int]:
    busy = asyncio.create_task(fe.call(s, server, "queue", {"sleep": 2, "tag": "busy"}))
    await wait_started(ledger, "busy")
    late = await fe.call(s, server, "queue", {"tag": "late"}, timeout_ms=200)
    assert await busy == 200
    assert "late" not in tags(ledger)  # it never reached the handler
    return late, 504


async def response_timeout(fe: FrontEnd, s: aiohttp.ClientSession, server: ServerProcess,
                           ledger: Path) -> tuple[object, int]:
    status = await fe.call(s, server, "mortal", {"sleep": 30})  # responseTimeout is 2 s
    ready_again(server, "mortal")
    return status, 504


async def handler_error(fe: FrontEnd, s: aiohttp.ClientSession, server: ServerProcess,
                        ledger: Path) -> tuple[int, int]:
    return await fe.call(s, server, "behaviour", {"raise": "prediction", "code": 599}), 599


async def worker_died(fe: FrontEnd, s: aiohttp.ClientSession, server: ServerProcess,
                      ledger: Path) -> tuple[int, int]:
    status = await fe.call(s, server, "mortal", {"exit": True})
    ready_again(server, "mortal")
    return status, 502


async def client_cancelled(fe: FrontEnd, s: aiohttp.ClientSession, server: ServerProcess,
                           ledger: Path) -> tuple[object, int]:
    """The client hangs up while its request waits: it is withdrawn (never reaches the
    handler). Nobody is left to read an HTTP status; the code is 499 in the data plane."""
    busy = asyncio.create_task(fe.call(s, server, "queue", {"sleep": 2, "tag": "busy"}))
    await wait_started(ledger, "busy")
    gone = asyncio.create_task(fe.call(s, server, "queue", {"tag": "gone"}))
    await asyncio.to_thread(wait_queued, server, "queue", 1)  # it waits its turn
    gone.cancel()  # the client hangs up
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await busy == 200
    assert await fe.call(s, server, "queue", {"tag": "kept"}) == 200
    assert "gone" not in tags(ledger)
    return fe.status(499), 499  # nobody reads it: what the front end would answer


CASES = [unknown_model, unknown_version, too_large, queue_full, queue_deadline,
         response_timeout, handler_error, worker_died, client_cancelled]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
@pytest.mark.parametrize("front_end", FRONT_ENDS, ids=[fe.name for fe in FRONT_ENDS])
def test_error_reaches_each_front_end_with_its_code(front_end: FrontEnd, case: Any,
                                                   server: ServerProcess, ledger: Path):
    async def scenario() -> tuple[int, int]:
        async with aiohttp.ClientSession() as session:
            return await case(front_end, session, server, ledger)

    ledger.unlink(missing_ok=True)
    seen, code = asyncio.run(scenario())
    assert seen == front_end.status(code), (
        f"{case.__name__} through {front_end.name}: got {seen}, expected "
        f"{front_end.status(code)} (error code {code})")

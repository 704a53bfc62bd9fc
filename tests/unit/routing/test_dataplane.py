"""The data plane over the real registry, scheduler and batcher, with a stand-in worker that
answers (and streams) when the test says so."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from serving.errors import (
    BadRequest,
    ClientCancelled,
    InternalError,
    ModelNotFound,
    ModelVersionNotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from serving.routing.batcher import Batcher, QueueFull, QueueTimeout
from serving.routing.dataplane import DataPlane
from serving.routing.registry import ModelSettings, ModelVersion, Registry
from serving.routing.scheduler import Scheduler
from serving.settings import Settings
from serving.types import InferenceRequest, InferenceResponse, Input
from tests.unit.routing.test_batcher import run


class StreamingWorker:
    """Holds one batch at a time; the test makes it stream, answer or see cancellations."""

    has_room = True
    busy = False  # takes any batch, as a free worker does

    def __init__(self) -> None:
        self.batches: list[tuple[Sequence[InferenceRequest], Any, Any]] = []
        self.cancelled: list[tuple[object, int]] = []

    def run(self, requests, done, timeout, partial=None, started=None) -> int:
        assert started is None  # never busy: every batch starts at once
        self.batches.append((requests, done, partial))
        return len(self.batches)

    def cancel(self, token: object, index: int) -> None:
        self.cancelled.append((token, index))

    def stream(self, body: bytes, index: int = 0) -> None:
        self.batches[-1][2](index, InferenceResponse(body, final=False))

    def answer(self, body: bytes = b"final") -> None:
        requests, done, _ = self.batches[-1]
        done([InferenceResponse(body) for _ in requests])


def plane(*, queue: int = 10, client_timeout_ms: int | None = None,
          ready: bool = True) -> tuple[DataPlane, StreamingWorker, Scheduler]:
    registry = Registry()
    scheduler = Scheduler(Batcher(1, 0, queue), response_timeout=None)
    worker = StreamingWorker()
    if ready:
        scheduler.add_worker(worker)
    pool = SimpleNamespace(accepting=True, last_error=None, ready_count=int(ready))
    registry.add(ModelVersion(
        name="m", version="1.0", url="m.mar", archive=Any, handler="h", runtime="python",
        settings=ModelSettings(client_timeout_ms=client_timeout_ms), model_yaml={},
        scheduler=scheduler, pool=pool))  # type: ignore[arg-type]
    settings = Settings(max_request_size=1000, max_response_size=100, max_json_depth=5)
    manager = SimpleNamespace(settings=settings, registry=registry, accepting=True,
                              healthy=lambda: True)
    return DataPlane(manager), worker, scheduler  # type: ignore[arg-type]


def request(body: bytes = b"{}", ctype: str = "application/json") -> InferenceRequest:
    return InferenceRequest("r1", [Input("body", ctype, body)], {})


@run
async def test_stream_gives_intermediate_answers_in_order_then_the_final():
    dp, worker, _ = plane()
    answers = dp.stream("m", None, request())
    first = asyncio.ensure_future(answers.__anext__())
    await asyncio.sleep(0)
    worker.stream(b"t0")
    worker.stream(b"t1")
    got = await first
    assert (got.body, got.final) == (b"t0", False)
    worker.answer()
    rest = [(a.body, a.final) async for a in answers]
    assert rest == [(b"t1", False), (b"final", True)]


@run
async def test_infer_returns_the_final_answer_only():
    dp, worker, _ = plane()
    result = asyncio.ensure_future(dp.infer("m", "1.0", request()))
    await asyncio.sleep(0)
    worker.stream(b"dropped")
    worker.answer()
    assert (await result).body == b"final"


@run
async def test_closing_a_running_stream_cancels_its_job_and_tells_the_worker():
    dp, worker, _ = plane()
    answers = dp.stream("m", None, request())
    pending = asyncio.ensure_future(answers.__anext__())
    await asyncio.sleep(0)
    worker.stream(b"t0")
    assert (await pending).body == b"t0"
    await answers.aclose()
    assert worker.cancelled == [(1, 0)]
    worker.stream(b"late")  # dropped, not queued for anybody
    worker.answer()
    with pytest.raises(StopAsyncIteration):
        await answers.__anext__()


@run
async def test_a_client_gone_while_queued_is_withdrawn_and_never_runs():
    dp, worker, scheduler = plane(ready=False)
    gone = asyncio.get_running_loop().create_future()
    result = asyncio.ensure_future(dp.infer("m", None, request(), disconnected=gone))
    await asyncio.sleep(0)
    gone.set_result(None)
    with pytest.raises(ClientCancelled) as info:
        await result
    assert info.value.code == 499
    scheduler.add_worker(worker)
    assert worker.batches == [] and len(scheduler.batcher) == 0


@run
async def test_a_stream_whose_client_goes_while_running_ends_with_client_cancelled():
    dp, worker, _ = plane()
    gone = asyncio.get_running_loop().create_future()
    answers = dp.stream("m", None, request(), disconnected=gone)
    pending = asyncio.ensure_future(answers.__anext__())
    await asyncio.sleep(0)
    gone.set_result(None)
    with pytest.raises(ClientCancelled):
        await pending
    assert worker.cancelled == [(1, 0)]


@run
async def test_cancelling_the_calling_task_withdraws_the_request():
    dp, worker, scheduler = plane(ready=False)
    task = asyncio.ensure_future(dp.infer("m", None, request()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    scheduler.add_worker(worker)
    assert worker.batches == []


@run
async def test_refused_requests_raise_and_their_watch_is_closed_not_leaked():
    dp, _, _ = plane(queue=1, ready=False)

    async def never() -> None:
        await asyncio.Event().wait()

    watches = [never(), never()]
    with pytest.raises(ModelNotFound):
        await dp.infer("nope", None, request(), disconnected=watches[0])
    with pytest.raises(ModelVersionNotFound):
        await dp.stream("m", "9", request(), disconnected=watches[1]).__anext__()
    # Closed, not left to be garbage-collected as "never awaited".
    assert all(w.cr_frame is None for w in watches)
    first = dp.submit("m", None, request())
    with pytest.raises(QueueFull):
        await dp.infer("m", None, request())
    first.cancel()


@run
async def test_input_checks_apply_whatever_the_front_end():
    dp, worker, _ = plane()
    with pytest.raises(PayloadTooLarge):
        await dp.infer("m", None, request(b"x" * 1001, "application/octet-stream"))
    with pytest.raises(BadRequest):  # nested past max_json_depth: no worker parses it
        await dp.infer("m", None, request(b"[[[[[[[]]]]]]]"))
    with pytest.raises(BadRequest):
        await dp.infer("m", None, request(), timeout_ms=0)
    explained = request()
    result = asyncio.ensure_future(dp.infer("m", None, explained, explain=True))
    await asyncio.sleep(0)
    assert worker.batches[-1][0][0].headers["explain"] == "True"
    worker.answer(b"y" * 101)  # over max_response_size
    with pytest.raises(InternalError):
        await result


@run
async def test_the_request_timeout_lowers_the_models_client_timeout():
    dp, _, _ = plane(client_timeout_ms=60_000, ready=False)
    with pytest.raises(QueueTimeout) as info:
        await dp.infer("m", None, request(), timeout_ms=20)
    assert info.value.code == 504


@run
async def test_readiness():
    dp, _, _ = plane()
    assert dp.server_live() and dp.server_ready() and not dp.draining
    assert dp.model_ready("m", None) and dp.model_info("m", "1.0").version == "1.0"
    assert [mv.version for mv in dp.model_versions("m")] == ["1.0"]
    assert dp.models() == ["m"] and dp.default_version("m") == "1.0"
    with pytest.raises(ModelNotFound):
        dp.model_ready("nope", None)
    dp._manager.accepting = False  # shutdown began
    assert not dp.server_ready() and dp.draining and not dp.model_ready("m", None)
    with pytest.raises(ServiceUnavailable):
        await dp.infer("m", None, request())

"""The scheduler counts every request of a model version exactly once, under its final
status, whatever way it ends: answered, refused, timed out, failed, withdrawn."""

from __future__ import annotations

import asyncio
import contextlib
import time

from serving.errors import NotStarted, ServiceUnavailable, ServingError, WorkerDied
from serving.metrics.catalog import FAILURE_REASONS, ServerMetrics
from serving.routing.batcher import Batcher, QueueFull
from serving.routing.scheduler import Scheduler
from serving.types import InferenceRequest, InferenceResponse
from tests.unit.routing.test_batcher import FakeWorker, run


def counts(server: ServerMetrics) -> dict[str, float]:
    out = {}
    for (_model, _version, status), child in server.requests.children.items():
        if child.value:  # type: ignore[union-attr]
            out[status] = child.value  # type: ignore[union-attr]
    return out


def reasons(server: ServerMetrics) -> dict[str, float]:
    return {key[2]: child.value  # type: ignore[union-attr]
            for key, child in server.failures.children.items() if child.value}  # type: ignore[union-attr]


@run
async def test_every_ending_is_counted_once():
    server = ServerMetrics(hostname="h")
    s = Scheduler(Batcher(batch_size=1, max_delay=0.0, capacity=2), response_timeout=None,
                  metrics=server.model("m", "1.0"))
    worker = FakeWorker("w")
    s.add_worker(worker)
    ok = s.submit(InferenceRequest("ok", []))            # runs at once
    queued = [s.submit(InferenceRequest(f"q{i}", [])) for i in range(2)]
    with contextlib.suppress(QueueFull):
        s.submit(InferenceRequest("full", []))
    queued[0].cancel()                                    # withdrawn while queued: 499
    worker.answer()                                       # ok: 200
    s.add_worker(worker)                                  # q1 runs
    running = queued[1]
    running.cancel()                                      # its client goes while it runs
    worker.answer(WorkerDied("gone"))                     # ...counted once, as 499
    s.add_worker(worker)
    custom = s.submit(InferenceRequest("custom", []))
    _requests, done, _ = worker.pending.pop(0)
    done([InferenceResponse(b"", 418)])                  # the worker is not idle again
    late = s.submit(InferenceRequest("deadline", []), queue_timeout=0.01)
    await asyncio.sleep(0.05)                             # deadline passes: 504
    failed = s.submit(InferenceRequest("drained", []))
    s.fail_queued(ServiceUnavailable("unloaded"))         # 503
    with contextlib.suppress(ServiceUnavailable):
        raise s.refused(ServiceUnavailable("no worker"))  # refused before the queue: 503
    for job in (ok, custom, late, failed, *queued):
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(job.future, 5)
    assert counts(server) == {"200": 1, "499": 2, "418": 1, "503": 3, "504": 1}
    assert reasons(server) == {"queue_full": 1, "client_gone": 2, "queue_timeout": 1,
                               "unavailable": 2}
    assert set(reasons(server)) <= set(FAILURE_REASONS)
    total = sum(counts(server).values())
    assert server.ts_requests.counter("m", "1.0", "h").value == total  # received, all of them
    assert server.latency.histogram("m", "1.0").counts[-1] + sum(
        server.latency.histogram("m", "1.0").counts[:-1]) == total


@run
async def test_a_batch_error_counts_each_request_under_its_reason():
    server = ServerMetrics(hostname="h")
    s = Scheduler(Batcher(batch_size=3, max_delay=5.0, capacity=10), response_timeout=None,
                  metrics=server.model("m", "1.0"))
    worker = FakeWorker("w")
    s.add_worker(worker)
    jobs = [s.submit(InferenceRequest(str(i), [])) for i in range(3)]
    assert worker.batches == [["0", "1", "2"]]  # full: sent at once
    worker.answer(ServingError("handler failed", 507))
    await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs), return_exceptions=True), 5)
    assert counts(server) == {"507": 3}
    assert reasons(server) == {"handler_error": 3}
    batch = server.batch_size.histogram("m", "1.0")
    assert batch.sum == 3 and sum(batch.counts) == 1


@run
async def test_queue_wait_ends_when_a_batch_sent_ahead_starts_and_is_counted_once():
    server = ServerMetrics(hostname="h")
    s = Scheduler(Batcher(batch_size=1, max_delay=0.0, capacity=10), response_timeout=None,
                  metrics=server.model("m", "1.0"))
    wait = server.queue_wait.histogram("m", "1.0")
    a = FakeWorker("a", depth=3)
    s.add_worker(a)
    jobs = [s.submit(InferenceRequest(str(i), [])) for i in range(3)]
    assert a.batches == [["0"], ["1"], ["2"]]
    assert sum(wait.counts) == 1          # "1" and "2" wait in the socket: not dispatched yet
    # The bound on the scheduler's own clock (perf_counter): the loop's timer (uvloop's has
    # ms resolution) may wake a hair before 20 ms of it have passed.
    queued = time.perf_counter()
    await asyncio.sleep(0.02)
    in_socket = time.perf_counter() - queued
    a.answer()                            # "1" starts after waiting behind "0"
    assert sum(wait.counts) == 2 and wait.sum >= in_socket
    s.remove_worker(a)
    a.answer(WorkerDied("died"))          # "1" fails; "2" never started: queued again
    a.answer(NotStarted("never started"))
    assert sum(wait.counts) == 2          # nothing counted for a batch that never started
    b = FakeWorker("b")
    s.add_worker(b)                       # "2" starts on the replacement: counted now, once
    assert sum(wait.counts) == 3
    b.answer()
    await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
    assert sum(wait.counts) == 3
    # Batches that ran: "0", "1" (its worker died under it) and "2", on the replacement.
    assert sum(server.inference.histogram("m", "1.0").counts) == 3

"""Queue deadlines, the byte bound and released bodies, on the real batcher and scheduler."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from serving.errors import BadRequest, ServiceUnavailable
from serving.gateway.predictions import request_timeout_ms
from serving.routing.batcher import Batcher, Job, QueueFull, QueueTimeout
from serving.routing.dataplane import queue_timeout
from serving.routing.scheduler import Scheduler
from serving.types import InferenceRequest, Input
from tests.unit.routing.test_batcher import FakeWorker, run


class Body(bytearray):
    """A request body a test can hold a weak reference to."""


def request(rid: str, size: int = 0) -> InferenceRequest:
    return InferenceRequest(rid, [Input("body", "application/octet-stream", Body(size))])


@run
async def test_a_queued_request_past_its_deadline_gets_504_and_never_runs():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10), response_timeout=None)
    w = FakeWorker("w")
    s.add_worker(w)
    busy = s.submit(request("busy"))                 # the only worker is taken...
    patient = s.submit(request("patient"))           # no deadline: waits as long as it takes
    later = s.submit(request("later"), queue_timeout=30.0)
    hasty = s.submit(request("hasty"), queue_timeout=0.02)   # an earlier deadline, queued later
    with pytest.raises(QueueTimeout) as info:
        await asyncio.wait_for(hasty.future, 10)
    assert info.value.code == 504 and "in the queue" in info.value.message
    assert not patient.future.done() and not later.future.done()
    assert len(s.batcher) == 2
    w.answer()
    s.add_worker(w)
    w.answer()
    s.add_worker(w)
    w.answer()
    assert w.batches == [["busy"], ["patient"], ["later"]]   # "hasty" never reached it
    assert [(await j.future).body for j in (busy, patient, later)] == [
        b"w:busy", b"w:patient", b"w:later"]


@run
async def test_deadlines_do_not_pile_up_for_requests_that_ran():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10), response_timeout=None)
    w = FakeWorker("w")
    s.add_worker(w)
    for i in range(500):
        job = s.submit(request(str(i)), queue_timeout=3600.0)
        w.answer()
        s.add_worker(w)
        await job.future
    assert len(s._deadlines) <= 2 * len(s.batcher) + 65


def test_the_queue_is_bounded_by_bytes_too():
    b = Batcher(batch_size=1, max_delay=0, capacity=100, max_bytes=1000)
    jobs = [_job(600), _job(300), _job(200)]
    b.put(jobs[0])
    b.put(jobs[1])
    with pytest.raises(QueueFull) as info:
        b.put(jobs[2])                               # 1,100 bytes would wait
    assert info.value.code == 503 and info.value.extra["retry_after"] == 1
    assert "job_queue_max_bytes" in info.value.message
    assert b.take(now=0) == [jobs[0]]                # a job a worker took no longer counts
    b.put(jobs[2])
    assert b.queued_bytes == 500
    big = Batcher(batch_size=1, max_delay=0, capacity=100, max_bytes=10)
    big.put(_job(50))                                # alone it is admitted, or never would be


@run
async def test_withdrawn_and_expired_jobs_release_their_bodies_at_once():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10, max_bytes=10**6),
                  response_timeout=None)
    s.add_worker(FakeWorker("w"))
    s.submit(request("running", 10))                 # holds the only worker
    gone, late = request("gone", 1000), request("late", 1000)
    refs = [_weak_body(gone), _weak_body(late)]
    withdrawn = s.submit(gone)
    expired = s.submit(late, queue_timeout=0.01)
    s.submit(request("behind", 10))                  # the two stay behind in the deque
    assert s.batcher.queued_bytes == 2010
    withdrawn.cancel()
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(expired.future, 10)
    assert s.batcher.queued_bytes == 10
    del gone, late
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


@run
async def test_failing_the_queue_answers_every_waiting_request_and_forgets_them():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10), response_timeout=None)
    jobs = [s.submit(request(str(i)), queue_timeout=60.0) for i in range(3)]
    s.fail_queued(ServiceUnavailable("the model is scaled to 0 workers"))
    for j in jobs:
        with pytest.raises(ServiceUnavailable):
            await j.future
    assert len(s.batcher) == 0 and s.batcher.queued_bytes == 0 and not s._deadlines


def test_request_bound_lowers_the_models_client_timeout_and_is_validated():
    assert queue_timeout(None, None) is None
    assert queue_timeout(0, None) is None                # TorchServe: 0 means no bound
    assert queue_timeout(2000, None) == 2.0
    assert queue_timeout(2000, 500) == 0.5
    assert queue_timeout(2000, 9000) == 2.0              # capped by the model
    assert queue_timeout(None, 9000) == 9.0
    for bad_ms in (0, -5):
        with pytest.raises(BadRequest):
            queue_timeout(2000, bad_ms)


def test_the_rest_header_is_read_as_whole_milliseconds():
    assert request_timeout_ms({}) is None
    assert request_timeout_ms({"x-request-timeout-ms": "500"}) == 500
    for bad in ("0", "-5", "soon", "1.5", ""):
        with pytest.raises(BadRequest) as info:
            request_timeout_ms({"x-request-timeout-ms": bad})
        assert "x-request-timeout-ms" in info.value.message


def _job(size: int) -> Job:
    loop = asyncio.new_event_loop()
    try:
        return Job(InferenceRequest("r", []), loop.create_future(), 0.0, size=size)
    finally:
        loop.close()


def _weak_body(req: InferenceRequest) -> weakref.ref[bytes]:
    return weakref.ref(req.inputs[0].value)

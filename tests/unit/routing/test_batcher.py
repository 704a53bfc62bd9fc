"""The batcher's closing rule and the scheduler's dispatch, with stand-in workers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import uvloop

from serving.errors import (
    NotStarted,
    ResponseTimeout,
    ServiceUnavailable,
    ServingError,
    WorkerDied,
)
from serving.routing.batcher import Batcher, Job, QueueFull, QueueTimeout
from serving.routing.scheduler import Scheduler
from serving.types import InferenceRequest, InferenceResponse, Input


def job(arrival: float, rid: str = "r") -> Job:
    loop = asyncio.new_event_loop()
    try:
        return Job(InferenceRequest(rid, []), loop.create_future(), arrival)
    finally:
        loop.close()


def test_batch_closes_when_full_or_after_delay_from_first_arrival():
    b = Batcher(batch_size=3, max_delay=0.010, capacity=10)
    b.put(job(100.000, "a"))
    b.put(job(100.004, "b"))
    assert b.take(now=100.009) is None          # neither full nor 10 ms after "a" arrived
    assert b.deadline() == pytest.approx(100.010)
    batch = b.take(now=100.010)                  # the delay counts from "a", not from a poll
    assert [j.request.request_id for j in batch] == ["a", "b"]
    for i in range(5):
        b.put(job(200.0, f"x{i}"))
    assert [j.request.request_id for j in b.take(now=200.0)] == ["x0", "x1", "x2"]
    assert len(b) == 2


def test_queue_bound_answers_at_once():
    b = Batcher(batch_size=1, max_delay=0, capacity=2)
    b.put(job(0))
    b.put(job(0))
    with pytest.raises(QueueFull) as info:
        b.put(job(0))
    assert info.value.code == 503 and info.value.extra["retry_after"] == 1
    assert b.remaining_capacity == 0


def test_discarded_jobs_never_leave_the_queue_and_free_their_slot():
    b = Batcher(batch_size=2, max_delay=0, capacity=3)
    jobs = [job(0, str(i)) for i in range(3)]
    for j in jobs:
        b.put(j)
    assert b.discard(jobs[0]) and b.remaining_capacity == 1
    assert not b.discard(jobs[0])
    assert [j.request.request_id for j in b.take(now=0)] == ["1", "2"]
    assert b.take(now=0) is None and len(b) == 0


class FakeWorker:
    """Records its batches; answers when the test says so. `depth` > 1: it overlaps."""

    def __init__(self, name: str, depth: int = 1) -> None:
        self.name = name
        self.depth = depth
        self.batches: list[list[str]] = []
        self.pending: list = []
        self.cancelled: list = []

    @property
    def has_room(self) -> bool:
        return len(self.pending) < self.depth

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    def run(self, requests: Sequence[InferenceRequest], done, timeout, partial=None,
            started=None) -> int:
        assert self.has_room, "a worker got a batch beyond what it declared it can hold"
        assert (started is None) == (not self.pending), \
            "a batch sent ahead must say when it starts; one that starts at once must not"
        self.batches.append([r.request_id for r in requests])
        self.pending.append((requests, done, started))
        return len(self.batches)

    def cancel(self, token: object, index: int) -> None:
        self.cancelled.append((token, index))

    def answer(self, error: ServingError | None = None) -> None:
        """Answer the batch at the head; as the real worker, start the next one held."""
        requests, done, _ = self.pending.pop(0)
        # A worker that died or was replaced starts nothing more: what it held comes back
        # NotStarted.
        stopped = isinstance(error, (WorkerDied, ResponseTimeout, NotStarted))
        if self.pending and self.pending[0][2] is not None and not stopped:
            self.pending[0][2]()
        done(error or [InferenceResponse(f"{self.name}:{r.request_id}".encode())
                       for r in requests])


def run(coro_fn):
    """Run an async test body on both event loops the server may use (no plugin needed):
    uvloop's timer handles, for one, differ from asyncio's."""
    @pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
    def test(runner) -> None:
        runner(coro_fn())
    test.__name__ = coro_fn.__name__
    return test


@run
async def test_scheduler_dispatch_and_exactly_one_answer():
    s = Scheduler(Batcher(batch_size=2, max_delay=0.05, capacity=10), response_timeout=None)
    w1, w2 = FakeWorker("w1"), FakeWorker("w2")
    s.add_worker(w1)
    s.add_worker(w2)
    jobs = [s.submit(InferenceRequest(str(i), [])) for i in range(5)]
    # Full batches go at once, each to a different idle worker; the fifth waits.
    assert sorted(w1.batches + w2.batches) == [["0", "1"], ["2", "3"]]
    w2.answer()
    s.add_worker(w2)               # the pool reports the worker idle again
    assert len(w2.batches) == 1    # the lone request waits for its delay...
    await asyncio.sleep(0.08)
    assert w2.batches[-1] == ["4"]  # ...then goes alone
    w1.answer(ServingError("boom", 503))
    w2.answer()
    results = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
    assert [isinstance(r, ServingError) for r in results].count(True) == 2
    for r in results:
        assert isinstance(r, ServingError | InferenceResponse)


@run
async def test_cancelled_job_is_never_sent():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10), response_timeout=None)
    w = FakeWorker("w")
    a = s.submit(InferenceRequest("a", []))
    b = s.submit(InferenceRequest("b", []))
    b.cancel()                    # its client went away while it was queued
    s.add_worker(w)
    w.answer()
    s.add_worker(w)
    assert w.batches == [["a"]]
    assert (await a.future).body == b"w:a"
    assert b.future.cancelled()


@run
async def test_drain_answers_what_is_left():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10), response_timeout=None)
    j = s.submit(InferenceRequest("a", []))
    await s.drain(timeout=0.05)     # no worker ever came
    with pytest.raises(ServiceUnavailable):
        await j.future
    with pytest.raises(ServiceUnavailable):
        s.submit(InferenceRequest("b", []))


@run
async def test_a_worker_that_overlaps_gets_a_second_batch_and_no_more():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10), response_timeout=None)
    w = FakeWorker("w", depth=2)
    s.add_worker(w)
    jobs = [s.submit(InferenceRequest(str(i), [])) for i in range(3)]
    assert w.batches == [["0"], ["1"]]  # the second waits in its socket, the third queues
    w.answer()
    s.add_worker(w)
    assert w.batches[-1] == ["2"]
    w.answer()
    w.answer()
    assert [(await j.future).body for j in jobs] == [b"w:0", b"w:1", b"w:2"]


@run
async def test_a_busy_worker_is_sent_only_full_batches_ahead_and_idle_workers_come_first():
    s = Scheduler(Batcher(batch_size=2, max_delay=0.05, capacity=10), response_timeout=None)
    a, b = FakeWorker("a", depth=2), FakeWorker("b", depth=2)
    s.add_worker(a)
    jobs = [s.submit(InferenceRequest(str(i), [])) for i in range(2)]
    assert a.batches == [["0", "1"]]
    s.add_worker(b)                                 # idle: it goes before busy `a`
    jobs += [s.submit(InferenceRequest(str(i), [])) for i in range(2, 5)]
    assert b.batches == [["2", "3"]] and a.batches == [["0", "1"]]
    # "4" alone is a partial batch: no busy worker is sent it ahead, it waits its delay...
    await asyncio.sleep(0.1)
    assert a.batches == [["0", "1"]] and b.batches == [["2", "3"]]
    jobs.append(s.submit(InferenceRequest("5", [])))  # ...until it is full
    assert [a.batches[1:], b.batches[1:]] in ([[["4", "5"]], []], [[], [["4", "5"]]])
    b.answer()
    s.add_worker(b)
    jobs.append(s.submit(InferenceRequest("6", [])))
    await asyncio.sleep(0.1)                        # partial, to the idle worker after delay
    assert ["6"] in b.batches
    for w in (a, b):
        while w.pending:
            w.answer()
    assert [(await j.future).body.split(b":")[1] for j in jobs] == \
        [str(i).encode() for i in range(7)]


@run
async def test_a_request_with_a_queue_deadline_is_not_sent_ahead_and_expires_in_the_queue():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10), response_timeout=None)
    w = FakeWorker("w", depth=2)
    s.add_worker(w)
    running = s.submit(InferenceRequest("run", []))
    late = s.submit(InferenceRequest("late", []), queue_timeout=0.05)
    assert w.batches == [["run"]]                 # "late" waits here, not in the socket
    with pytest.raises(QueueTimeout):
        await late.future
    plain = s.submit(InferenceRequest("plain", []))
    assert w.batches == [["run"], ["plain"]]      # without a deadline it is sent ahead
    w.answer()
    w.answer()
    assert (await running.future).body == b"w:run" and (await plain.future).body == b"w:plain"


@run
async def test_batches_sent_ahead_of_a_dead_worker_run_on_the_next_one():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10), response_timeout=None)
    a = FakeWorker("a", depth=3)
    s.add_worker(a)
    jobs = [s.submit(InferenceRequest(str(i), [])) for i in range(4)]
    assert a.batches == [["0"], ["1"], ["2"]]
    jobs[2].cancel()                               # its client leaves while it waits ahead
    s.remove_worker(a)
    a.answer(WorkerDied("died"))                    # the batch it ran
    a.answer(NotStarted("never started"))           # the two waiting in its socket
    a.answer(NotStarted("never started"))
    with pytest.raises(WorkerDied):
        await jobs[0].future
    assert s.inflight == 0 and len(s.batcher) == 2  # "1" is back, ahead of "3"; "2" gone
    b = FakeWorker("b", depth=1)
    s.add_worker(b)
    assert b.batches == [["1"]]
    b.answer()
    s.add_worker(b)
    b.answer()
    assert [(await j.future).body for j in (jobs[1], jobs[3])] == [b"b:1", b"b:3"]
    assert jobs[2].future.cancelled()


@run
async def test_a_listed_worker_that_lost_its_room_is_skipped_and_dropped():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10), response_timeout=None)
    gone, alive = FakeWorker("gone", depth=3), FakeWorker("alive")
    s.add_worker(alive)
    s.add_worker(gone)                 # listed last: dispatch would take it first
    gone.depth = 0                     # it died or is being replaced meanwhile
    job = s.submit(InferenceRequest("x", []))
    assert gone.batches == [] and alive.batches == [["x"]]
    assert gone not in s._idle
    alive.answer()
    assert (await job.future).body == b"alive:x"


@run
async def test_a_partial_batch_waits_for_its_first_requests_deadline():
    # "b" comes 0.5 s after "a": the batch must go at a's deadline, not b's (0.5 s later),
    # which a timer re-armed on each arrival would wait for. The gaps are wide so that only
    # a half-second stall of the test process could blur the two.
    loop = asyncio.get_running_loop()
    s = Scheduler(Batcher(batch_size=3, max_delay=1.0, capacity=10), response_timeout=None)
    w = FakeWorker("w")
    s.add_worker(w)
    a = s.submit(InferenceRequest("a", []))
    a_deadline = s.batcher.deadline()
    assert a_deadline is not None
    await asyncio.sleep(0.5)
    b = s.submit(InferenceRequest("b", []))
    assert w.batches == [] and s.batcher.deadline() == a_deadline

    async def dispatched() -> float:
        while not w.batches:
            await asyncio.sleep(0.005)
        return loop.time()

    sent = await asyncio.wait_for(dispatched(), 10)
    assert a_deadline - 0.01 <= sent < a_deadline + 0.5
    assert w.batches == [["a", "b"]]
    w.answer()
    assert [(await j.future).body for j in (a, b)] == [b"w:a", b"w:b"]


@run
async def test_requests_sent_ahead_count_against_the_queue_bound_until_they_start():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=2), response_timeout=None)
    w = FakeWorker("w", depth=3)
    s.add_worker(w)
    running = s.submit(InferenceRequest("run", []))     # starts at once: outside the bound
    held = [s.submit(InferenceRequest(f"h{i}", [])) for i in range(2)]
    assert w.batches == [["run"], ["h0"], ["h1"]]        # both wait in the worker's socket
    assert len(s.batcher) == 0 and s.queued_jobs_state() == (2, 0)
    with pytest.raises(QueueFull):                       # 2 waiting: the bound is reached
        s.submit(InferenceRequest("over", []))
    w.answer()                                           # "h0" starts: one place frees
    assert s.queued_jobs_state() == (1, 1)
    later = s.submit(InferenceRequest("later", []))
    s.add_worker(w)
    assert w.batches[-1] == ["later"]
    for _ in range(3):
        w.answer()
    assert [(await j.future).body for j in (running, *held, later)] == \
        [b"w:run", b"w:h0", b"w:h1", b"w:later"]
    assert s.queued_jobs_state() == (0, 2)


@run
async def test_the_byte_bound_counts_bodies_sent_ahead_too():
    s = Scheduler(Batcher(batch_size=1, max_delay=0, capacity=10, max_bytes=10),
                  response_timeout=None)
    w = FakeWorker("w", depth=2)
    s.add_worker(w)
    s.submit(InferenceRequest("run", [Input("body", "application/octet-stream", b"x" * 8)]))
    s.submit(InferenceRequest("held", [Input("body", "application/octet-stream", b"x" * 8)]))
    assert w.batches == [["run"], ["held"]]
    with pytest.raises(QueueFull):   # 8 bytes waiting in the socket + 8 > 10
        s.submit(InferenceRequest("over", [Input("body", "application/octet-stream",
                                                 b"x" * 8)]))
    w.answer()                       # "held" starts: its bytes no longer wait
    s.submit(InferenceRequest("fits", [Input("body", "application/octet-stream", b"x" * 8)]))
    assert s.batcher.held_bytes == 0 and s.batcher.queued_bytes == 8


def test_send_ahead_depth_follows_the_batch_time():
    from serving.workers.sendahead import (
        MIN_SEND_AHEAD_DEPTH,
        SEND_AHEAD_BUDGET_S,
        send_ahead_depth,
    )
    assert send_ahead_depth(0.0, 16) == MIN_SEND_AHEAD_DEPTH          # nothing measured yet
    assert send_ahead_depth(SEND_AHEAD_BUDGET_S / 100, 16) == 16       # fast: up to the cap
    assert send_ahead_depth(SEND_AHEAD_BUDGET_S / 4, 16) == 5          # the running one + 4
    assert send_ahead_depth(SEND_AHEAD_BUDGET_S * 10, 16) == MIN_SEND_AHEAD_DEPTH  # slow
    assert send_ahead_depth(SEND_AHEAD_BUDGET_S / 100, 1) == 1         # one at a time stays so

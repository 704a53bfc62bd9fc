"""Dispatching one model version's batches to its idle workers, event-driven.

No task polls the queue: a dispatch is attempted when a request arrives, when a worker
becomes idle, and when the oldest waiting request's batch delay runs out (one timer). Queue
deadlines have a second timer, for the earliest one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Sequence
from functools import partial
from time import perf_counter
from typing import Protocol

from serving.errors import NotStarted, ResponseTimeout, ServiceUnavailable, ServingError, WorkerDied
from serving.metrics.catalog import NO_METRICS, ModelMetrics
from serving.routing.batcher import Batcher, Job, JobState, QueueFull, QueueTimeout
from serving.types import InferenceRequest, InferenceResponse

BatchResult = list[InferenceResponse] | ServingError
# Not an HTTP answer: nginx's "client closed request", the status a request whose client went
# away is counted under (it gets no answer).
CLIENT_GONE = 499


class BatchRunner(Protocol):
    """What the scheduler needs of a worker."""

    def run(self, requests: Sequence[InferenceRequest], done: _Done,
            timeout: float | None, partial: _Partial | None = None,
            started: Callable[[], None] | None = None) -> object:
        """Start a batch, or send it ahead to wait behind those the worker holds
        (`started` is called when it reaches the worker's head); returns a token naming it
        for `cancel`."""

    def cancel(self, token: object, index: int) -> None:
        """The client of the request at `index` of that batch went away (best effort: a
        streaming handler stops sending for it; others finish, their answer dropped)."""

    @property
    def has_room(self) -> bool: ...

    @property
    def busy(self) -> bool:
        """Whether it holds a batch (then it takes only a full one more, if it has room)."""


class _Done(Protocol):
    def __call__(self, result: BatchResult, /) -> None: ...


class _Partial(Protocol):
    """An intermediate answer for the request at `index` of the batch."""

    def __call__(self, index: int, answer: InferenceResponse, /) -> None: ...


class Scheduler:
    """Queue, batch and hand out work for one model version; every job answered once."""

    def __init__(self, batcher: Batcher, response_timeout: float | None,
                 metrics: ModelMetrics = NO_METRICS) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.response_timeout = response_timeout
        self.accepting = True
        self.inflight = 0
        self._idle: list[BatchRunner] = []
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # uvloop's timer handles do not tell when they fire
        self._settled = asyncio.Event()
        self._settled.set()
        # Queued jobs with a deadline, earliest first; entries of jobs that left the queue are
        # skipped when they reach the top and swept out when they outnumber the queue.
        self._deadlines: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = 0.0

    def submit(self, request: InferenceRequest, queue_timeout: float | None = None) -> Job:
        """Queue a request; raises QueueFull or ServiceUnavailable instead of waiting.

        `queue_timeout` (s): how long it may wait for a worker; past it, 504 and it never runs.
        """
        if not self.accepting:
            raise self.refused(ServiceUnavailable("Model is being unloaded; no new requests "
                                                  "are accepted"))
        self.metrics.received()
        now = self._loop.time()
        job = Job(request, self._loop.create_future(), now, withdraw=self.cancel,
                  size=sum(len(i.value) for i in request.inputs), received_at=perf_counter())
        try:
            self.batcher.put(job)
        except QueueFull as e:
            self.metrics.answered(e.code, perf_counter() - job.received_at)
            self.metrics.failed("queue_full")
            raise
        self._settled.clear()
        if queue_timeout is not None:
            job.deadline = now + queue_timeout
            self._add_deadline(job, job.deadline)
        self._dispatch()
        return job

    def refused(self, error: ServingError) -> ServingError:
        """Count a request for this version refused before it could queue; returns the
        error to raise."""
        self.metrics.received()
        self.metrics.answered(error.code, 0.0)
        if isinstance(error, ServiceUnavailable):
            self.metrics.failed("unavailable")
        return error

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if queued; if running, its answer is dropped
        and its worker told (a streaming handler then stops)."""
        if self.batcher.discard(job):
            self._client_gone(job, perf_counter())  # it never reaches _settle
            job.future.cancel()
            self._check_settled()
        elif not job.future.done():
            job.future.cancel()  # counted when its batch comes back
            if job.state in _HELD_OR_RUNNING and job.runner is not None:
                job.runner.cancel(job.batch_token, job.index)

    def _client_gone(self, job: Job, now: float) -> None:
        self.metrics.answered(CLIENT_GONE, now - job.received_at)
        self.metrics.failed("client_gone")

    def _settle(self, job: Job, result: InferenceResponse | ServingError, now: float) -> None:
        """Give a job its answer and count it; every job that was not withdrawn from the queue
        comes here exactly once. A cancelled future: its client went away meanwhile. `now`:
        perf_counter."""
        if job.future.done():
            job.state = JobState.DONE
            if job.future.cancelled():
                self._client_gone(job, now)
            return
        metrics = self.metrics
        if isinstance(result, ServingError):
            metrics.answered(result.code, now - job.received_at)
            metrics.failed(failure_reason(result))
        else:
            metrics.answered(result.status, now - job.received_at)
            if result.status >= 500:
                metrics.failed("handler_error")
        job.resolve(result)

    def add_worker(self, worker: BatchRunner) -> None:
        """A worker has room for a batch. `_idle` keeps the workers holding nothing at its
        end, where dispatch takes from, and those running a batch (with room for one more
        waiting in their socket) at its start: an idle worker is always chosen first."""
        idle = self._idle
        if worker in idle:
            idle.remove(worker)
        if worker.busy:
            idle.insert(0, worker)
        else:
            idle.append(worker)
        self._dispatch()

    def remove_worker(self, worker: BatchRunner) -> None:
        if worker in self._idle:
            self._idle.remove(worker)

    def _dispatch(self, now: float | None = None) -> None:
        if now is None:
            now = self._loop.time()
        idle = self._idle
        while idle:
            worker = idle[-1]
            if not worker.has_room:  # it died or is being replaced since it was listed
                idle.pop()
                continue
            # A worker running a batch gets the next one sent ahead (so that it finds it in
            # its socket instead of waiting a round trip), but only a full one: a partial
            # batch waits for a free worker, gathering requests meanwhile.
            batch = self.batcher.take_full() if worker.busy else self.batcher.take(now)
            if batch is None:
                break
            idle.pop()
            self.inflight += len(batch)
            started = None
            if worker.busy:  # it waits in the worker's socket: it starts when it is its turn
                self.batcher.hold(batch)
                started = partial(self._started, batch)
            else:
                self._started(batch)
            token = worker.run([job.request for job in batch], partial(self._done, batch),
                               self.response_timeout, partial(_partial, batch), started)
            for i, job in enumerate(batch):  # so that a client going away can be told
                job.runner = worker
                job.batch_token = token
                job.index = i
            if worker.has_room:  # it takes one more, sent ahead
                idle.insert(0, worker)
        if idle and not idle[-1].busy and len(self.batcher):
            self._arm_timer()  # the batch delay runs out for a free worker

    def _arm_timer(self) -> None:
        deadline = self.batcher.deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer, deadline)
        self._timer_at = deadline

    def _add_deadline(self, job: Job, deadline: float) -> None:
        if len(self._deadlines) > 2 * len(self.batcher) + 64:
            self._deadlines = [e for e in self._deadlines if e[2].state is JobState.QUEUED]
            heapq.heapify(self._deadlines)
        heapq.heappush(self._deadlines, (deadline, next(self._seq), job))
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        heap = self._deadlines
        while heap and heap[0][2].state is not JobState.QUEUED:
            heapq.heappop(heap)
        if not heap:
            return
        deadline = heap[0][0]
        if self._expiry is not None:
            if self._expiry_at <= deadline:
                return
            self._expiry.cancel()
        self._expiry = self._loop.call_at(deadline, self._expire, deadline)
        self._expiry_at = deadline

    def _expire(self, deadline: float) -> None:
        """Answer every queued job whose deadline has passed with 504; none of them runs."""
        self._expiry = None
        now = max(self._loop.time(), deadline)  # uvloop's millisecond clock, as in _on_timer
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            at, _, job = heapq.heappop(heap)
            if self.batcher.discard(job):
                waited = (now - job.arrival) * 1000
                self._settle(job, QueueTimeout(
                    f"Request waited {waited:.0f} ms in the queue without a worker taking it "
                    f"(deadline {(at - job.arrival) * 1000:.0f} ms: clientTimeoutInMills or "
                    "x-request-timeout-ms)"), perf_counter())
        self._check_settled()
        self._arm_expiry()

    def _on_timer(self, deadline: float) -> None:
        self._timer = None
        # uvloop's clock ticks in milliseconds, so a timer can run while loop.time() still
        # reads a hair before its deadline; the deadline has passed by definition here.
        self._dispatch(max(self._loop.time(), deadline))

    def _started(self, batch: list[Job]) -> None:
        """A batch reached its worker's head: its queue wait ends now (so the queue-time
        metrics count a wait in a worker's socket as the wait it is)."""
        if batch[0].state is JobState.SENT:
            self.batcher.release_held(batch)
        dispatched = self.metrics.dispatched
        now = perf_counter()
        for job in batch:
            job.state = JobState.RUNNING
            job.dispatched_at = now
            dispatched(now - job.received_at)

    def _done(self, batch: list[Job], result: BatchResult) -> None:
        self.inflight -= len(batch)
        now = perf_counter()
        ran = batch[0].state is not JobState.SENT
        if not ran:  # sent ahead, never started: its worker died or was replaced first
            self.batcher.release_held(batch)
        if isinstance(result, NotStarted):
            self._requeue(batch, now)
            return
        if ran:
            self.metrics.batch_done(len(batch), now - batch[0].dispatched_at)
        if isinstance(result, ServingError):
            for job in batch:
                self._settle(job, result, now)
        else:
            for job, answer in zip(batch, result, strict=True):
                self._settle(job, answer, now)
        self._check_settled()

    def _requeue(self, batch: list[Job], now: float) -> None:
        """A batch that never reached its handler (it waited behind one whose worker died or
        was replaced) goes back to the head of the queue, for the next free worker. A job
        whose client left meanwhile is counted as gone instead."""
        again = [job for job in batch if not job.future.done()]
        for job in batch:
            if job.future.done():
                self._settle(job, NotStarted("not started"), now)  # counts the client gone
        if again:
            self.batcher.requeue(again)
            for job in again:
                if job.deadline is not None:
                    self._add_deadline(job, job.deadline)
            self._dispatch()
        self._check_settled()

    def _check_settled(self) -> None:
        if not self.inflight and not len(self.batcher):
            self._settled.set()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let queued and running requests finish (up to `timeout`), then
        answer whatever is left with 503."""
        self.accepting = False
        try:
            async with asyncio.timeout(timeout):
                await self._settled.wait()
        except TimeoutError:
            pass
        self.fail_queued(ServiceUnavailable("Model was unloaded before this request ran"))

    def fail_queued(self, error: ServingError) -> None:
        now = perf_counter()
        for job in self.batcher.drain():
            self._settle(job, error, now)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._check_settled()

    def queued_jobs_state(self) -> tuple[int, int]:
        """(pending requests: queued or sent ahead, not started; remaining queue capacity)
        for describe."""
        return self.batcher.waiting, self.batcher.remaining_capacity


_HELD_OR_RUNNING = (JobState.SENT, JobState.RUNNING)


def _partial(batch: list[Job], index: int, answer: InferenceResponse) -> None:
    batch[index].partial(answer)


def failure_reason(error: ServingError) -> str:
    """The `reason` label of serving_request_failures_total for an error answer."""
    if isinstance(error, QueueFull):
        return "queue_full"
    if isinstance(error, QueueTimeout):
        return "queue_timeout"
    if isinstance(error, ResponseTimeout):
        return "response_timeout"
    if isinstance(error, WorkerDied):
        return "worker_died"
    if isinstance(error, ServiceUnavailable):
        return "unavailable"
    if type(error) is ServingError:  # sent by the worker: the handler failed the batch
        return "handler_error"
    return "internal"

"""Dispatching one model version's batches to its idle workers, event-driven.

No task polls the queue: a dispatch is attempted when a request arrives, when a worker
becomes idle, and when the oldest waiting request's batch delay runs out (one timer). Queue
deadlines have a second timer, for the earliest one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Sequence
from functools import partial
from typing import Protocol

from serving.errors import ServiceUnavailable, ServingError
from serving.routing.batcher import Batcher, Job, JobState, QueueTimeout
from serving.types import InferenceRequest, InferenceResponse

BatchResult = list[InferenceResponse] | ServingError


class BatchRunner(Protocol):
    """What the scheduler needs of a worker."""

    def run(self, requests: Sequence[InferenceRequest], done: _Done,
            timeout: float | None, partial: _Partial | None = None) -> object:
        """Start a batch; returns a token naming it for `cancel`."""

    def cancel(self, token: object, index: int) -> None:
        """The client of the request at `index` of that batch went away (best effort: a
        streaming handler stops sending for it; others finish, their answer dropped)."""

    @property
    def has_room(self) -> bool: ...


class _Done(Protocol):
    def __call__(self, result: BatchResult, /) -> None: ...


class _Partial(Protocol):
    """An intermediate answer for the request at `index` of the batch."""

    def __call__(self, index: int, answer: InferenceResponse, /) -> None: ...


class Scheduler:
    """Queue, batch and hand out work for one model version; every job answered once."""

    def __init__(self, batcher: Batcher, response_timeout: float | None) -> None:
        self.batcher = batcher
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
            raise ServiceUnavailable("Model is being unloaded; no new requests are accepted")
        now = self._loop.time()
        job = Job(request, self._loop.create_future(), now, withdraw=self.cancel,
                  size=sum(len(i.value) for i in request.inputs))
        self.batcher.put(job)
        self._settled.clear()
        if queue_timeout is not None:
            job.deadline = now + queue_timeout
            self._add_deadline(job, job.deadline)
        self._dispatch()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if queued; if running, its answer is dropped
        and its worker told (a streaming handler then stops)."""
        if self.batcher.discard(job):
            job.future.cancel()
            self._check_settled()
        elif not job.future.done():
            job.future.cancel()
            if job.state is JobState.RUNNING and job.runner is not None:
                job.runner.cancel(job.batch_token, job.index)

    def add_worker(self, worker: BatchRunner) -> None:
        """A worker is ready for a batch."""
        if worker not in self._idle:
            self._idle.append(worker)
        self._dispatch()

    def remove_worker(self, worker: BatchRunner) -> None:
        if worker in self._idle:
            self._idle.remove(worker)

    def _dispatch(self, now: float | None = None) -> None:
        if now is None:
            now = self._loop.time()
        while self._idle:
            batch = self.batcher.take(now)
            if batch is None:
                break
            worker = self._idle.pop()
            for job in batch:
                job.started = now
            self.inflight += len(batch)
            token = worker.run([job.request for job in batch], partial(self._done, batch),
                               self.response_timeout, partial(_partial, batch))
            for i, job in enumerate(batch):  # so that a client going away can be told
                job.runner = worker
                job.batch_token = token
                job.index = i
            if worker.has_room:  # a worker that overlaps batches takes one more
                self._idle.insert(0, worker)
        if self._idle and len(self.batcher):
            self._arm_timer()

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
                job.resolve(QueueTimeout(
                    f"Request waited {waited:.0f} ms in the queue without a worker taking it "
                    f"(deadline {(at - job.arrival) * 1000:.0f} ms: clientTimeoutInMills or "
                    "x-request-timeout-ms)"))
        self._check_settled()
        self._arm_expiry()

    def _on_timer(self, deadline: float) -> None:
        self._timer = None
        # uvloop's clock ticks in milliseconds, so a timer can run while loop.time() still
        # reads a hair before its deadline; the deadline has passed by definition here.
        self._dispatch(max(self._loop.time(), deadline))

    def _done(self, batch: list[Job], result: BatchResult) -> None:
        self.inflight -= len(batch)
        if isinstance(result, ServingError):
            for job in batch:
                job.resolve(result)
        else:
            for job, answer in zip(batch, result, strict=True):
                job.resolve(answer)
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
        for job in self.batcher.drain():
            job.resolve(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._check_settled()

    def queued_jobs_state(self) -> tuple[int, int]:
        """(pending requests, remaining queue capacity) for describe."""
        return len(self.batcher), self.batcher.remaining_capacity


def _partial(batch: list[Job], index: int, answer: InferenceResponse) -> None:
    batch[index].partial(answer)

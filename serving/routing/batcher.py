"""The bounded queue of one model version and its rule for closing a batch.

A batch may close when it is full, or once `max_delay` has passed since the first request
still waiting arrived. (TorchServe starts the delay when a worker polls the queue, so a request
that waited for a busy worker then waits up to `maxBatchDelay` more; counting from the arrival
makes that wait part of the delay. A lone request to an idle model still waits the delay out.)
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.errors import ResponseTimeout, ServiceUnavailable
from serving.types import InferenceRequest, InferenceResponse

# What a job that left the queue without running points at, so that its body is freed at once
# even while the job itself still sits in the queue's deque or the deadline heap.
RELEASED = InferenceRequest("", [])


class JobState(enum.Enum):
    QUEUED = 1
    SENT = 2  # in a batch sent ahead to a busy worker: waits in its socket, not started
    RUNNING = 3
    DONE = 4


class QueueFull(ServiceUnavailable):
    """The model's job queue is at `job_queue_size` (or `job_queue_max_bytes`): answered at
    once, never waited on."""


class QueueTimeout(ResponseTimeout):
    """A request waited in the queue past its deadline (`clientTimeoutInMills` or the
    request's `x-request-timeout-ms`): 504, and it never reaches a worker."""


@dataclass(slots=True, eq=False)
class Job:
    """One request on its way through routing: a stream of results, of which the last, and
    only it, resolves the future (exactly once).

    Intermediate answers of a streaming handler go to `listener`, if one listens (the data
    plane's `stream`); nobody listening, they are dropped. The listener is also called with
    None when the final result is set, so that one wake-up serves both kinds of news.
    """

    request: InferenceRequest
    future: asyncio.Future[InferenceResponse]
    arrival: float
    state: JobState = JobState.QUEUED
    withdraw: Callable[[Job], None] | None = None  # set by the scheduler that queued it
    size: int = 0  # body bytes, counted against the queue's byte bound while queued
    deadline: float | None = None  # loop time after which it may no longer start
    listener: Callable[[InferenceResponse | None], None] | None = None
    # While it runs: who runs it, the batch it is in (as the runner names it) and its place.
    runner: Any = None
    batch_token: object = None
    index: int = 0
    # perf_counter at arrival and when its batch started (reached a worker that was free, or
    # reached the head of a busy worker's socket): the metrics' queue wait and inference time
    # (uvloop's clock ticks in ms)
    received_at: float = 0.0
    dispatched_at: float = 0.0

    def release(self) -> None:
        """Drop the request (and its body) of a job that will never run."""
        self.request = RELEASED

    def cancel(self) -> None:
        """The client went away: never run it if still queued; drop its answer otherwise."""
        if self.withdraw is not None:
            self.withdraw(self)

    def partial(self, answer: InferenceResponse) -> None:
        """An intermediate answer: to the listener, unless the job is over (answered,
        cancelled: the client went away) or nobody listens."""
        listener = self.listener
        if listener is not None and not self.future.done():
            listener(answer)

    def resolve(self, result: InferenceResponse | BaseException) -> None:
        """Set the answer unless one was given already (a timeout, a cancellation)."""
        self.state = JobState.DONE
        if self.future.done():
            return
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)
        if self.listener is not None:
            self.listener(None)


class Batcher:
    """Futures in, batches out: a FIFO with a size bound and the batch-closing rule.

    The bounds count every request that has not started: those in the queue and those
    `held` in batches sent ahead to a busy worker (waiting in its socket). Only a batch a
    worker runs is outside them, as in TorchServe, where nothing waits anywhere but the queue.
    """

    def __init__(self, batch_size: int, max_delay: float, capacity: int,
                 max_bytes: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._queue: deque[Job] = deque()
        self._pending = 0
        self.queued_bytes = 0
        self.held = 0  # requests sent ahead, not started
        self.held_bytes = 0

    def __len__(self) -> int:
        return self._pending

    @property
    def waiting(self) -> int:
        """Requests not started: queued, or sent ahead and waiting in a worker's socket."""
        return self._pending + self.held

    @property
    def remaining_capacity(self) -> int:
        return max(0, self.capacity - self._pending - self.held)

    def put(self, job: Job) -> None:
        if self._pending + self.held >= self.capacity:
            raise QueueFull(f"Model queue is full ({self.capacity} requests waiting); "
                            "retry later", retry_after=1)
        # One request is always admitted when none waits (max_request_size bounds it), so
        # that a bound below one body never turns into a 503 that no retry can pass.
        waiting_bytes = self.queued_bytes + self.held_bytes
        if (self.max_bytes is not None and (self._pending or self.held)
                and waiting_bytes + job.size > self.max_bytes):
            raise QueueFull(f"Model queue is full ({waiting_bytes} bytes waiting, "
                            f"job_queue_max_bytes is {self.max_bytes}); retry later",
                            retry_after=1)
        self._queue.append(job)
        self._pending += 1
        self.queued_bytes += job.size

    def discard(self, job: Job) -> bool:
        """Withdraw a queued job (its client went away, its deadline passed); it never
        reaches a worker and its body is released now, not when the queue reaches it."""
        if job.state is not JobState.QUEUED:
            return False
        job.state = JobState.DONE
        self._pending -= 1
        self.queued_bytes -= job.size
        job.release()
        return True

    def deadline(self) -> float | None:
        """When the oldest waiting request's batch must close, if any is waiting."""
        head = self._head()
        return None if head is None else head.arrival + self.max_delay

    def take(self, now: float) -> list[Job] | None:
        """The batch that may be sent now, or None if it should wait for more requests."""
        head = self._head()
        if head is None:
            return None
        if self._pending < self.batch_size and now < head.arrival + self.max_delay:
            return None
        return self._pop_batch()

    def take_full(self) -> list[Job] | None:
        """A full batch if one is waiting: what a worker still busy with another batch gets
        (a partial batch waits for the worker to be free, gathering more requests). Nor is a
        batch with a request that has a queue deadline sent ahead: that deadline bounds its
        wait for a free worker, which it must spend here, where it can expire."""
        if self._pending < self.batch_size:
            return None
        seen = 0
        for job in self._queue:
            if job.state is JobState.QUEUED:
                if job.deadline is not None:
                    return None
                seen += 1
                if seen == self.batch_size:
                    break
        return self._pop_batch()

    def hold(self, jobs: list[Job]) -> None:
        """A batch taken from the queue goes ahead to a busy worker: still waiting, still
        counted against the bounds until it starts (`release_held`)."""
        self.held += len(jobs)
        for job in jobs:
            job.state = JobState.SENT
            self.held_bytes += job.size

    def release_held(self, jobs: list[Job]) -> None:
        """A batch sent ahead started, or came back (requeued, failed): no longer held."""
        self.held -= len(jobs)
        for job in jobs:
            self.held_bytes -= job.size

    def requeue(self, jobs: list[Job]) -> None:
        """Put jobs that were taken but never reached a handler back at the head of the queue,
        in their order; they were admitted already, so no bound refuses them."""
        for job in reversed(jobs):
            job.state = JobState.QUEUED
            job.runner = None
            job.batch_token = None
            self._queue.appendleft(job)
            self._pending += 1
            self.queued_bytes += job.size

    def _pop_batch(self) -> list[Job]:
        batch: list[Job] = []
        queue = self._queue
        while queue and len(batch) < self.batch_size:
            job = queue.popleft()
            if job.state is JobState.QUEUED:
                job.state = JobState.RUNNING
                batch.append(job)
                self.queued_bytes -= job.size
        self._pending -= len(batch)
        return batch

    def drain(self) -> list[Job]:
        """Remove and return every waiting job (shutdown, unregister, no worker left)."""
        jobs = [j for j in self._queue if j.state is JobState.QUEUED]
        self._queue.clear()
        self._pending = 0
        self.queued_bytes = 0
        for job in jobs:
            job.release()
        return jobs

    def _head(self) -> Job | None:
        queue = self._queue
        while queue and queue[0].state is not JobState.QUEUED:
            queue.popleft()
        return queue[0] if queue else None

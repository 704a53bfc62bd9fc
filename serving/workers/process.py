"""One worker process seen from the gateway: spawn, load, run batches, notice its death."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from serving.errors import InternalError, NotStarted, ResponseTimeout, ServingError, WorkerDied
from serving.types import InferenceRequest, InferenceResponse
from serving.workers.batch import decode_result, decode_stream, encode_batch
from serving.workers.channel import WorkerConnection
from serving.workers.ipc import MAX_FRAME, Kind, Message, Oversize, ProtocolError
from serving.workers.lifeline import GATEWAY_PID_ENV
from serving.workers.listener import WorkerListener
from serving.workers.pinning import spawn_env
from serving.workers.sendahead import SendAhead
from serving.workers.spec import WorkerSpec, WorkerState

log = logging.getLogger(__name__)

BatchCallback = Callable[[list[InferenceResponse] | ServingError], None]
# An intermediate answer of a streaming handler, for the request at an index of the batch.
PartialCallback = Callable[[int, InferenceResponse], None]

# What a RESULT frame may carry beyond its bodies: the frame's and each answer's metadata.
FRAME_META_ALLOWANCE = 64 * 1024
ITEM_META_ALLOWANCE = 64 * 1024
# Any other frame from a worker (LOADED, PONG) is small; a larger one is a broken worker.
CONTROL_FRAME_LIMIT = 64 * 1024 * 1024


class Worker:
    """A worker process holding one model version; runs one batch at a time."""

    def __init__(self, worker_id: str, slot: int, spec: WorkerSpec, listener: WorkerListener,
                 on_idle: Callable[[Worker], None], on_exit: Callable[[Worker], None]) -> None:
        self.id = worker_id
        self.slot = slot
        self.spec = spec
        self.stop_requested = False
        self.state = WorkerState.STARTING
        self.pid: int | None = None
        self.start_time = time.time()
        self.load_seconds = 0.0  # spawn to loaded
        self.exit_code: int | None = None
        self._listener = listener
        self._on_idle = on_idle
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        self._conn: WorkerConnection | None = None
        self._loaded: asyncio.Future[Message] | None = None
        self._batch_id = 0
        self._ping_timer: asyncio.TimerHandle | None = None
        self.load_info: dict[str, Any] = {}  # what the worker reported when it loaded
        # Batches sent and not answered, oldest first: the one the worker runs, then those
        # sent ahead, which it finds waiting in its socket instead of idling through a round
        # trip (up to max_inflight; the worker still runs one batch at a time, in order).
        self._inflight: deque[_Batch] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # loop time the deadline timer fires at (uvloop does not tell)
        # Held from start(): asyncio.get_running_loop() costs a getpid() syscall per call on
        # Python 3.11, and the deadline is re-armed for every batch.
        self._loop: asyncio.AbstractEventLoop | None = None
        self.max_inflight = 1  # batches it may hold now
        self._send_ahead: SendAhead | None = None  # max_inflight follows its batch times
        self._exited = asyncio.Event()
        self._retired = False  # being replaced (timeout, protocol breach): takes no batch
        self._flushes: deque[asyncio.Future[None]] = deque()  # FLUSHes not answered yet

    @property
    def busy(self) -> bool:
        return bool(self._inflight)

    @property
    def inflight_batches(self) -> int:
        """Batches sent and not answered: the one it runs and those waiting in its socket."""
        return len(self._inflight)

    @property
    def has_room(self) -> bool:
        """Whether the scheduler may send another batch now."""
        return self.state in (WorkerState.READY, WorkerState.BUSY) and \
            not self._retired and len(self._inflight) < self.max_inflight

    async def start(self, timeout: float) -> None:
        """Spawn the process and wait until its handler is initialised, or raise why not."""
        self._loop = asyncio.get_running_loop()
        hello = self._listener.expect(self.id)
        env = spawn_env(os.environ, self.spec.env)
        env[GATEWAY_PID_ENV] = str(os.getpid())
        extra = ["--log-file", self.spec.log_file,
                 "--log-max-bytes", str(self.spec.log_max_bytes),
                 "--log-backup-count", str(self.spec.log_backup_count)
                 ] if self.spec.log_file else []
        # A session (and process group) of its own: the terminal's Ctrl-C goes to the
        # gateway alone, which drains; a worker is never interrupted mid-batch by it. It
        # still dies with the gateway (lifeline.die_with_parent, first thing in the worker).
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.spec.module, "--socket", self._listener.path,
            "--worker-id", self.id, "--log-level", self.spec.log_level, *extra,
            env=env, stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        self.pid = self._proc.pid
        asyncio.get_running_loop().create_task(self._watch(self._proc))
        try:
            async with asyncio.timeout(timeout):
                self._conn = await _first(hello, self._exited, "exited before connecting")
                self._conn.on_message = self._on_message
                self._conn.on_lost = self._on_lost
                self._conn.frame_limit = self._frame_limit
                self._conn.on_oversize = self._on_oversize
                loop = asyncio.get_running_loop()
                self._loaded = loop.create_future()
                self._conn.send(Kind.LOAD, dict(self.spec.load))
                loaded = await _first(self._loaded, self._exited, "exited while loading")
        except TimeoutError:
            self.kill()
            raise ServingError(f"worker {self.id} did not load within {timeout:.0f} s "
                               "(startup_timeout)") from None
        except (ServingError, asyncio.CancelledError):
            # Cancelled: the server stops while this worker loads; it must not outlive it.
            self.kill()
            raise
        finally:
            self._listener.forget(self.id)
        if not loaded.meta.get("ok"):
            self.kill()
            raise ServingError.from_dict(loaded.meta["error"])
        self.load_info = loaded.meta
        self.load_seconds = time.time() - self.start_time
        depth = self.spec.max_inflight or int(loaded.meta.get("overlap") or 0)
        if depth:  # named by the model's config or its handler: fixed
            self.max_inflight = max(1, depth)
        else:
            self._send_ahead = SendAhead(self.spec.default_inflight)
            self.max_inflight = self._send_ahead.depth
        self.state = WorkerState.READY

    def run(self, requests: Sequence[InferenceRequest], done: BatchCallback,
            timeout: float | None, partial: PartialCallback | None = None,
            started: Callable[[], None] | None = None) -> int:
        """Send one batch; `done` is called exactly once with its answers or an error, and
        `partial` with each intermediate answer a streaming handler sends before. A batch
        sent while the worker holds others waits behind them: `started` is called when the
        worker starts it (it has reached the head). Returns the batch's id (for `cancel`)."""
        assert self._conn is not None and len(self._inflight) < self.max_inflight
        self._batch_id += 1
        ahead = bool(self._inflight)
        meta, blobs = encode_batch(self._batch_id, requests, ahead=ahead)
        now = time.perf_counter()
        self._inflight.append(_Batch(self._batch_id, requests, done, timeout, now, partial,
                                     started))
        if not ahead:
            self._arm_deadline()
            if started is not None:
                started()
        self.state = WorkerState.BUSY
        try:
            self._conn.send(Kind.PREDICT, meta, blobs)
        except ConnectionError:
            self._fail_inflight(WorkerDied(f"worker {self.id} connection closed"))
        return self._batch_id

    def flush_metrics(self) -> asyncio.Future[None] | None:
        """Ask the worker for the handler metric updates it holds; the future is done once
        they are recorded (or the worker is gone). The worker answers after the batches
        already sent to it. None: no live worker to ask."""
        if self._conn is None or self._conn.closed or \
                self.state not in (WorkerState.READY, WorkerState.BUSY):
            return None
        try:
            self._conn.send(Kind.FLUSH, {})
        except ConnectionError:
            return None
        loop = self._loop or asyncio.get_running_loop()
        flushed: asyncio.Future[None] = loop.create_future()
        self._flushes.append(flushed)
        return flushed

    def _on_metrics(self, msg: Message) -> None:
        observer = self.spec.observer
        if observer is not None:
            try:
                observer.handler_metrics(msg.meta.get("m"))
            except Exception:  # metrics must never cost the worker
                log.exception("recording the handler metrics of worker %s failed", self.id)
        if msg.meta.get("flush") is True and self._flushes:
            flushed = self._flushes.popleft()
            if not flushed.done():
                flushed.set_result(None)

    def cancel(self, token: object, index: int) -> None:
        """Tell the worker that the client of a request of a batch it holds went away: a
        streaming handler is stopped at its next intermediate answer for it."""
        if self._conn is None or self._conn.closed or \
                not any(b.batch_id == token for b in self._inflight):
            return
        with contextlib.suppress(ConnectionError):
            self._conn.send(Kind.CANCEL, {"batch": token, "i": index})

    def _arm_deadline(self) -> None:
        """Start the deadline of the batch now at the head of the queue.

        The deadline runs for the batch the worker is working on: a batch queued behind
        another starts its clock when it reaches the head. One timer serves every batch: it
        is left armed when a batch is answered in time, and when it fires for a deadline
        that a later batch's replaced, it re-arms for that one. (A timer handle created and
        cancelled per batch cost more than the batch's own routing.)
        """
        if not self._inflight:
            return
        head = self._inflight[0]
        if head.timeout is None:
            return
        loop = self._loop or asyncio.get_running_loop()
        head.deadline = loop.time() + head.timeout
        if self._timer is not None:
            if self._timer_at <= head.deadline:
                return  # it fires first and re-arms for this batch then
            self._timer.cancel()
        self._timer = loop.call_at(head.deadline, self._check_deadline, head.deadline)
        self._timer_at = head.deadline

    def _check_deadline(self, at: float) -> None:
        self._timer = None
        if not self._inflight:
            return
        head = self._inflight[0]
        if head.deadline is None or head.timeout is None:
            return
        if head.deadline <= at:
            # (uvloop's clock ticks in milliseconds: the timer's own time, not loop.time(),
            # says that this deadline has come.)
            self._timed_out(head.timeout)
            return
        loop = self._loop or asyncio.get_running_loop()
        self._timer = loop.call_at(head.deadline, self._check_deadline, head.deadline)
        self._timer_at = head.deadline

    def _on_message(self, msg: Message) -> None:
        if msg.kind == Kind.LOADED:
            if self._loaded is not None and not self._loaded.done():
                self._loaded.set_result(msg)
            return
        if msg.kind == Kind.PONG:
            if self._ping_timer is not None:
                self._ping_timer.cancel()
                self._ping_timer = None
            return
        if msg.kind == Kind.METRICS:
            self._on_metrics(msg)
            return
        if msg.kind != Kind.RESULT and msg.kind != Kind.STREAM:
            self._broken(f"a {msg.kind.name} message, which only the gateway sends")
            return
        batch_id = msg.meta.get("batch")
        head = self._inflight[0] if self._inflight else None
        if head is None or batch_id != head.batch_id:
            oldest = head.batch_id if head is not None else self._batch_id + 1
            if type(batch_id) is int and 0 < batch_id < oldest:
                return  # an answer to a batch already failed (timed out): dropped
            self._broken(f"a result for batch {batch_id!r:.40}, which it was not running")
            return
        if msg.kind == Kind.STREAM:
            self._on_stream(msg, head)
            return
        try:
            result = decode_result(msg, head.requests)
        except ProtocolError as e:
            self._broken(f"a malformed result ({e})")
            return
        if self.spec.observer is not None:
            try:
                self.spec.observer.worker_result(msg.meta, time.perf_counter() - head.began)
            except Exception:  # metrics must never cost a request its answer
                log.exception("recording the metrics of worker %s's batch failed", self.id)
        self._finish_head(result)

    def _on_stream(self, msg: Message, head: _Batch) -> None:
        """Intermediate answers for requests of the batch being worked on."""
        try:
            answers = decode_stream(msg, head.requests)
        except ProtocolError as e:
            self._broken(f"a malformed intermediate result ({e})")
            return
        if head.partial is not None:
            for index, answer in answers:
                head.partial(index, answer)

    def _finish_head(self, result: list[InferenceResponse] | ServingError) -> None:
        head = self._inflight.popleft()
        now = time.perf_counter()
        if self._send_ahead is not None:
            self._adapt_depth(now - head.began)
        if self._inflight:  # the worker went on with the next one, which it held
            nxt = self._inflight[0]
            nxt.began = now
            if nxt.started is not None:
                nxt.started()
        self._arm_deadline()
        if self.state == WorkerState.BUSY and not self._inflight:
            self.state = WorkerState.READY
        head.done(result)
        if self.has_room:
            self._on_idle(self)

    def _adapt_depth(self, seconds: float) -> None:
        """Fold one batch's time in and size the send-ahead depth from it."""
        assert self._send_ahead is not None
        self.max_inflight = self._send_ahead.observe(seconds)

    def _frame_limit(self, kind: int) -> int:
        """The most body bytes the next frame of `kind` may declare: a RESULT (or STREAM)
        carries answers of the oldest batch in flight, each up to max_response_size."""
        limit = self.spec.max_response_size
        if (kind != Kind.RESULT and kind != Kind.STREAM) or not self._inflight:
            return CONTROL_FRAME_LIMIT
        if limit is None:
            return MAX_FRAME
        n = len(self._inflight[0].requests)
        return min(MAX_FRAME, n * (limit + ITEM_META_ALLOWANCE) + FRAME_META_ALLOWANCE)

    def _on_oversize(self, frame: Oversize) -> None:
        # The frame's bytes are skipped as they arrive; its batch is answered now (what the
        # worker still sends for it is dropped as an answer to a batch no longer running).
        if (frame.kind != Kind.RESULT and frame.kind != Kind.STREAM) or not self._inflight:
            self._broken(f"a frame of {frame.size} bytes (kind {frame.kind})")
            return
        n = len(self._inflight[0].requests)
        log.warning("worker %s %s a batch of %d with %d bytes, more than "
                    "max_response_size allows; its requests get 500", self.id,
                    "sent for" if frame.kind == Kind.STREAM else "answered", n, frame.size)
        self._finish_head(InternalError(
            f"Response of {frame.size} bytes for a batch of {n} exceeds max_response_size "
            f"({self.spec.max_response_size} bytes per response)"))

    def _broken(self, what: str) -> None:
        """The worker sent something this protocol does not allow: whatever it holds can no
        longer be matched to its answers, so its requests fail and it is replaced."""
        log.error("worker %s (pid %s) sent %s; replacing it", self.id, self.pid, what)
        self._retired = True
        self._fail_inflight(WorkerDied(f"worker {self.id} broke the worker protocol ({what}); "
                                       "it was replaced"))
        if self._conn is not None:
            self._conn.close()
        self.kill()

    def ping(self, timeout: float) -> None:
        """Ask an idle worker whether it still reads its socket; kill it if it does not
        answer within `timeout` (a hang outside any batch: busy ones have a deadline)."""
        if self.state != WorkerState.READY or self._conn is None or self._ping_timer:
            return
        try:
            self._conn.send(Kind.PING, {})
        except ConnectionError:
            return  # its connection is gone: the death of the worker is on its way
        self._ping_timer = asyncio.get_running_loop().call_later(timeout, self._hung, timeout)

    def _hung(self, timeout: float) -> None:
        self._ping_timer = None
        log.warning("worker %s (pid %s) did not answer a ping within %g s; replacing it",
                    self.id, self.pid, timeout)
        self.kill()

    def _timed_out(self, timeout: float) -> None:
        self._retired = True  # before its batches are handed back: routing must not resend
        self._fail_inflight(ResponseTimeout(f"worker {self.id} did not answer within "
                                            f"{timeout:g} s (response_timeout)"),
                            requeue_waiting=True)
        # The worker is stuck in the handler: only a restart frees it.
        self.kill()

    def _fail_inflight(self, error: ServingError, requeue_waiting: bool = False) -> None:
        """Answer every batch it holds with `error`; with `requeue_waiting`, only the one it
        was running: those behind it never left its socket (it runs batches one at a time,
        in order) and are handed back to routing to run elsewhere."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Taken out first: answering a batch can make routing dispatch again, and this
        # worker (no room now: dead or retired) must not be handed one it would then fail.
        held = list(self._inflight)
        self._inflight.clear()
        if requeue_waiting and held:
            held.pop(0).done(error)
            if held:
                log.warning("worker %s: %d batch(es) sent ahead never started; queued again",
                            self.id, len(held))
            error = NotStarted(f"worker {self.id} was replaced before starting this batch")
        for batch in held:
            batch.done(error)

    def _on_lost(self, exc: Exception | None) -> None:
        self._died()

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        self.exit_code = await proc.wait()
        self._exited.set()
        self._died()

    def _died(self) -> None:
        if self.state == WorkerState.DEAD:
            return
        expected = self.stop_requested
        was_starting = self.state == WorkerState.STARTING
        self.state = WorkerState.DEAD
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        self._fail_inflight(WorkerDied(f"worker {self.id} (pid {self.pid}) exited while "
                                       "running this request"), requeue_waiting=True)
        while self._flushes:  # what it held is lost (at most SEND_METRICS_EVERY of it)
            flushed = self._flushes.popleft()
            if not flushed.done():
                flushed.set_result(None)
        if self._conn is not None:
            self._conn.close()
        if not expected and not was_starting:
            log.warning("worker %s (pid %s) died", self.id, self.pid)
        if not was_starting:
            self._on_exit(self)

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not within `timeout`."""
        self.stop_requested = True
        if self.state == WorkerState.DEAD:
            return
        self.state = WorkerState.STOPPING
        if self._conn is not None and not self._conn.closed:
            self._conn.send(Kind.SHUTDOWN, {})
        try:
            async with asyncio.timeout(timeout):
                await self._exited.wait()
        except TimeoutError:
            self.kill()
            await self._exited.wait()

    def abandon(self, error: ServingError) -> None:
        """Answer the batches it holds with `error` now and kill it (shutdown: past the
        drain timeout nothing waits for a handler)."""
        self.stop_requested = True
        self._retired = True
        self._fail_inflight(error)
        self.kill()

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGKILL)


@dataclass(slots=True)
class _Batch:
    batch_id: int
    requests: Sequence[InferenceRequest]
    done: BatchCallback
    timeout: float | None
    # perf_counter when the worker started it: when it was written to the socket of a worker
    # holding nothing, or when the batch before it was answered
    began: float
    partial: PartialCallback | None = None
    started: Callable[[], None] | None = None  # called when it reaches the head
    deadline: float | None = None  # loop time; set when it reaches the head of the queue


async def _first(fut: asyncio.Future[Any], exited: asyncio.Event, what: str) -> Any:
    """Await `fut` unless the process exits first."""
    waiter = asyncio.ensure_future(exited.wait())
    try:
        await asyncio.wait({fut, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if fut.done():
        return fut.result()
    fut.cancel()
    raise ServingError(f"worker process {what}; see the server log for its error")

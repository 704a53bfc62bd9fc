"""The worker processes of one model version: start, scale, replace the dead, stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import psutil

from serving.errors import InternalError, ServingError
from serving.workers.backoff import Backoff
from serving.workers.listener import WorkerListener
from serving.workers.pinning import WorkerPlacement
from serving.workers.process import Worker
from serving.workers.spec import WorkerSpec, WorkerState

log = logging.getLogger(__name__)

# TorchServe numbers its workers from 9000; clients and dashboards have seen these ids.
_worker_ids = itertools.count(9000)

Place = Callable[[int], list[WorkerPlacement]]


class WorkerPool:
    """Keeps `target` workers of one model version alive and tells the scheduler about them.

    Each worker slot keeps its placement (cores, memory node) for its whole life, through
    restarts: a replacement takes the place of the worker it replaces, and no other model's
    workers move.
    """

    def __init__(self, label: str, spec: Callable[[int, WorkerPlacement | None], WorkerSpec],
                 listener: WorkerListener, on_ready: Callable[[Worker], None],
                 on_gone: Callable[[Worker], None], startup_timeout: float,
                 on_unavailable: Callable[[str], None] = lambda reason: None,
                 place: Place | None = None,
                 release: Callable[[WorkerPlacement], None] = lambda p: None,
                 stop_timeout: float = 10.0,
                 on_started: Callable[[Worker], None] = lambda worker: None) -> None:
        self.label = label
        self.target = 0
        self.workers: dict[str, Worker] = {}
        self.restarts = 0
        self.slot_restarts: dict[int, int] = {}
        self.last_error: str | None = None
        self._spec = spec
        self._listener = listener
        self._on_ready = on_ready
        self._on_gone = on_gone
        self._on_unavailable = on_unavailable
        self._on_started = on_started  # once per worker, when it has loaded
        self._place = place
        self._release = release
        self._placements: dict[int, WorkerPlacement] = {}
        self._startup_timeout = startup_timeout
        # How long a stopping worker may take to finish the batch it holds before it is
        # killed (scale-down must not cut a batch that is within its response timeout).
        self._stop_timeout = stop_timeout
        self._backoff: dict[int, Backoff] = {}  # per slot: one flapping worker slows no other
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._replacing: set[int] = set()  # slots whose worker died and awaits its successor
        # Slots placed by a scale() whose workers are not spawned yet: a concurrent scale()
        # must count them and must not place the same slot (and cores) a second time.
        self._starting: set[int] = set()

    @property
    def accepting(self) -> bool:
        """Whether requests may wait for this pool: a worker runs, starts, or is being
        replaced after a crash (not after a failed replacement)."""
        if self.target == 0:
            return False
        return self._live() or (bool(self._tasks) and self.last_error is None)

    @property
    def ready_count(self) -> int:
        return sum(1 for w in self.workers.values()
                   if w.state in (WorkerState.READY, WorkerState.BUSY))

    def largest_rss(self) -> int | None:
        """The largest resident memory of the loaded workers (what one more would need),
        None when none has loaded yet."""
        sizes = []
        for worker in self.workers.values():
            if worker.pid is None or worker.state not in (WorkerState.READY, WorkerState.BUSY):
                continue
            with contextlib.suppress(psutil.Error):
                sizes.append(psutil.Process(worker.pid).memory_info().rss)
        return max(sizes, default=None)

    def _live(self) -> bool:
        return any(w.state not in (WorkerState.STOPPING, WorkerState.DEAD)
                   for w in self.workers.values())

    def placement_of(self, slot: int) -> WorkerPlacement | None:
        return self._placements.get(slot)

    async def scale(self, n: int) -> None:
        """Start or stop workers until `n` run; raises the first start-up failure (always a
        ServingError), after which the target is what runs."""
        self.target = n
        if n == 0:
            # Nothing will ever take what is queued: answer it now, not after a timeout.
            self._on_unavailable("the model is scaled to 0 workers")
        live = [w for w in self.workers.values()
                if w.state not in (WorkerState.STOPPING, WorkerState.DEAD)]
        pending = len(self._starting - {w.slot for w in live})
        if len(live) + pending < n:
            slots = self._free_slots(n - len(live) - pending)
            try:
                if self._place is not None:
                    # All new workers are placed in one call, so `auto` sizes them together.
                    for slot, placement in zip(slots, self._place(len(slots)), strict=True):
                        self._placements[slot] = placement
            except Exception as e:
                self._settle_target()
                raise _as_serving_error(e, "placing workers failed") from None
            self._starting.update(slots)
            try:
                results = await asyncio.gather(*(self._start(slot) for slot in slots),
                                               return_exceptions=True)
            finally:
                self._starting.difference_update(slots)
            errors = [r for r in results if isinstance(r, BaseException)]
            for slot, result in zip(slots, results, strict=True):
                if isinstance(result, BaseException):
                    self._free_slot(slot)
            if errors:
                # Nothing retries a start that failed outright, and health must not wait for
                # workers that will never come.
                self._settle_target()
                raise errors[0]
        elif len(live) > n:
            # Starting workers go first (nothing runs on them), then idle ones, then the
            # newest; a busy one finishes its batch first.
            victims = sorted(live, key=lambda w: (w.state is not WorkerState.STARTING, w.busy,
                                                  -w.start_time))[: len(live) - n]
            await asyncio.gather(*(self._stop(w) for w in victims))

    def _settle_target(self) -> None:
        """After a refused or failed scale-up the target is what runs or is on its way (a
        scale-down meanwhile may have asked for fewer still: that stands)."""
        coming = sum(1 for w in self.workers.values()
                     if w.state not in (WorkerState.STOPPING, WorkerState.DEAD))
        self.target = min(self.target, coming + len(self._replacing))

    def _free_slots(self, count: int) -> list[int]:
        used = {w.slot for w in self.workers.values() if w.state != WorkerState.DEAD}
        # A slot is free only once its placement is released: a stopped worker's slot is
        # handed back by _stop after the process exits, not when it is marked DEAD.
        used |= self._replacing | self._starting | set(self._placements)
        free = (s for s in itertools.count() if s not in used)
        return list(itertools.islice(free, count))

    async def _start(self, slot: int) -> None:
        """Start one worker; any failure (the handler's, a spawn that hits EMFILE, a LOAD
        message that cannot be encoded) leaves no worker behind and raises a ServingError.
        A worker stopped while it starts (a scale-down) is not a failure."""
        try:
            spec = self._spec(slot, self._placements.get(slot))
        except Exception as e:
            raise self._failed(_as_serving_error(e, "preparing a worker failed")) from None
        worker = Worker(str(next(_worker_ids)), slot, spec, self._listener,
                        on_idle=self._on_ready, on_exit=self._exited)
        self.workers[worker.id] = worker
        try:
            await worker.start(self._startup_timeout)
        except Exception as e:
            worker.kill()  # a process may run already: it must not outlive the failure
            self._listener.forget(worker.id)  # a spawn that failed never got that far
            self.workers.pop(worker.id, None)
            if worker.stop_requested:
                return
            raise self._failed(_as_serving_error(e, "worker start failed")) from None
        if worker.stop_requested:  # loaded just as a scale-down stopped it
            worker.kill()
            return
        self.last_error = None
        log.info("%s: worker %s ready (pid %s)", self.label, worker.id, worker.pid)
        log.info("%s ready: %s", self.label, _pipeline(worker.load_info))
        self._on_started(worker)
        self._on_ready(worker)

    def _failed(self, error: ServingError) -> ServingError:
        self.last_error = error.message
        return error

    async def _stop(self, worker: Worker, timeout: float | None = None) -> None:
        self._on_gone(worker)
        if worker.state is WorkerState.STARTING:
            # Nothing runs on it yet: no batch to wait for, and it may not read SHUTDOWN
            # before it has loaded.
            worker.stop_requested = True
            worker.kill()
        await worker.stop(self._stop_timeout if timeout is None else timeout)
        self.workers.pop(worker.id, None)
        self._free_slot(worker.slot)

    def _free_slot(self, slot: int) -> None:
        placement = self._placements.pop(slot, None)
        if placement is not None:
            self._release(placement)

    def _exited(self, worker: Worker) -> None:
        """A worker died; its held requests were already failed. Replace it with backoff."""
        self._on_gone(worker)
        self.workers.pop(worker.id, None)
        if self._closing or worker.stop_requested:
            return
        live = sum(1 for w in self.workers.values() if w.state != WorkerState.STOPPING)
        if live >= self.target:
            self._free_slot(worker.slot)
            return
        self.restarts += 1
        self.slot_restarts[worker.slot] = self.slot_restarts.get(worker.slot, 0) + 1
        log.warning("%s: worker %s (pid %s, exit code %s) died; replacing it", self.label,
                    worker.id, worker.pid, worker.exit_code)
        self._schedule_replacement(worker.slot)

    def _schedule_replacement(self, slot: int) -> None:
        self._replacing.add(slot)
        delay = self._backoff.setdefault(slot, Backoff()).next_delay(time.monotonic())
        task = asyncio.get_running_loop().create_task(self._replace(slot, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, slot: int, delay: float) -> None:
        await asyncio.sleep(delay)
        self._replacing.discard(slot)
        live = sum(1 for w in self.workers.values() if w.state != WorkerState.STOPPING)
        if self._closing or live >= self.target:  # scaled down meanwhile
            self._free_slot(slot)
            return
        try:
            await self._start(slot)
        except ServingError as e:  # _start raises nothing else
            log.error("%s: replacement worker failed to start: %s", self.label, e.message)
            if not self._live():
                # Nobody can serve what is queued: answer it now rather than let it wait
                # through the back-off.
                self._on_unavailable(e.message)
            self._schedule_replacement(slot)

    async def close(self, abandon: ServingError | None = None, grace: float | None = None
                    ) -> None:
        """Stop every worker (after its current batch) and cancel pending restarts. With
        `abandon` (shutdown), busy workers answer their batches with it and are killed at
        once, idle ones get `grace` seconds to exit."""
        self._closing = True
        self.target = 0
        for task in list(self._tasks):
            task.cancel()
        self._replacing.clear()
        if abandon is not None:
            for worker in self.workers.values():
                if worker.busy or worker.state == WorkerState.STARTING:
                    worker.abandon(abandon)
        await asyncio.gather(*(self._stop(w, grace) for w in list(self.workers.values())))
        for slot in list(self._placements):
            self._free_slot(slot)


def _as_serving_error(error: Exception, what: str) -> ServingError:
    """The project's own errors pass as they are; anything else is a 500 naming its type."""
    if isinstance(error, ServingError):
        return error
    log.error("%s: %s: %s", what, type(error).__name__, error)
    return InternalError(f"{what}: {type(error).__name__}: {error}")


def _pipeline(load_info: dict[str, Any]) -> str:
    """What the worker runs, from the optimisation report it sent when it loaded."""
    report = load_info.get("optimization")
    if not isinstance(report, dict):
        return "as the handler loaded it (no optimization block)"
    return str(report.get("ready") or "+".join(report.get("applied") or []) or "as loaded")

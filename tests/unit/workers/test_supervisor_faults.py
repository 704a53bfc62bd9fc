"""WorkerPool under start-up faults, with real worker processes and a real listener: a start
that fails with anything leaves no worker behind, and a scale-down of starting workers is not
a failure of the scale-up that started them."""

from __future__ import annotations

import asyncio
import datetime
import gc
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from serving.errors import ServingError
from serving.workers.backoff import Backoff
from serving.workers.listener import WorkerListener
from serving.workers.pinning import WorkerPlacement
from serving.workers.process import Worker
from serving.workers.spec import WorkerSpec, WorkerState
from serving.workers.supervisor import WorkerPool

ROOT = Path(__file__).resolve().parents[3]


def worker_pids(socket_path: str) -> list[int]:
    """Worker processes of this test's listener that are still running."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if socket_path in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


async def until(predicate: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def with_pool(tmp_path: Path, spec: Callable[[int, WorkerPlacement | None], WorkerSpec],
                    body: Callable[[WorkerPool, str], object]) -> None:
    listener = WorkerListener(tmp_path / "w.sock")
    await listener.start()
    ready: list[Worker] = []
    pool = WorkerPool("t/1.0", spec, listener, on_ready=ready.append,
                      on_gone=lambda w: None, startup_timeout=60, stop_timeout=60)
    try:
        async with asyncio.timeout(120):  # a fault that hangs the pool fails the test
            await body(pool, listener.path)  # type: ignore[misc]
            assert ready == []
            await pool.close()
    finally:
        await listener.close()


def test_a_load_message_that_cannot_be_sent_fails_the_start_and_kills_the_process(
        tmp_path: Path):
    # What a model-config.yaml with an unquoted date used to do: TypeError in json.dumps.
    def spec(slot: int, placement: WorkerPlacement | None) -> WorkerSpec:
        return WorkerSpec(load={"model_yaml_config": {"released": datetime.date(2024, 5, 1)}})

    async def body(pool: WorkerPool, path: str) -> None:
        with pytest.raises(ServingError) as info:
            await pool.scale(2)
        assert info.value.code == 500 and "TypeError" in info.value.message
        assert pool.workers == {}               # no phantom STARTING worker
        assert pool.target == 0 and pool.ready_count == 0 and not pool.accepting
        assert pool.last_error and "TypeError" in pool.last_error
        await until(lambda: not worker_pids(path), "the spawned workers to be gone")

    asyncio.run(with_pool(tmp_path, spec, body))


def test_a_spawn_that_hits_emfile_fails_cleanly(tmp_path: Path):
    def spec(slot: int, placement: WorkerPlacement | None) -> WorkerSpec:
        return WorkerSpec(load={})

    async def body(pool: WorkerPool, path: str) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        gc.collect()  # what is left to close must not free descriptors during the spawn
        in_use = len(os.listdir("/proc/self/fd"))
        # Below what is open: no new descriptor, even if a few close meanwhile.
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(3, in_use - 8), hard))
        try:
            with pytest.raises(ServingError) as info:
                await pool.scale(1)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert info.value.code == 500 and "Too many open files" in info.value.message
        assert pool.workers == {} and pool.target == 0

    asyncio.run(with_pool(tmp_path, spec, body))


def test_scaling_down_workers_that_are_still_starting_is_not_a_failure(tmp_path: Path):
    # A worker that never gets to say HELLO: it stays STARTING until it is stopped.
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(600)\n")

    def spec(slot: int, placement: WorkerPlacement | None) -> WorkerSpec:
        return WorkerSpec(load={}, env={"PYTHONPATH": f"{slow}{os.pathsep}{ROOT}"})

    async def body(pool: WorkerPool, path: str) -> None:
        scale_up = asyncio.ensure_future(pool.scale(3))
        await until(lambda: len(worker_pids(path)) == 3, "three starting workers")
        assert all(w.state is WorkerState.STARTING for w in pool.workers.values())
        # The stop must not wait out stop_timeout (60 s) for workers with nothing to finish.
        await asyncio.wait_for(pool.scale(1), 30)
        assert pool.target == 1
        assert len(pool.workers) == 1
        await pool.scale(0)
        await asyncio.wait_for(scale_up, 30)    # completes, and does not raise
        assert pool.target == 0 and pool.workers == {}
        await until(lambda: not worker_pids(path), "the stopped workers to be gone")

    asyncio.run(with_pool(tmp_path, spec, body))


def test_restart_backoff_counts_from_the_last_failure():
    b = Backoff()
    # Failures in quick succession (a worker that crashes as soon as it is up) back off...
    assert [b.next_delay(t) for t in (0, 2, 5, 10, 19, 36, 67)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    # ...and a worker that then served for an hour comes back after the shortest delay,
    # however long ago its process started.
    assert b.next_delay(3667) == 1.0
    assert b.next_delay(3670) == 2.0


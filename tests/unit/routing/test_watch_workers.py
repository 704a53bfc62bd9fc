"""The idle-ping loop of the real ModelManager survives a worker whose ping fails."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from serving.handlers.archive import Manifest, UnpackedArchive
from serving.routing.batcher import Batcher
from serving.routing.manager import ModelManager
from serving.routing.registry import ModelSettings, ModelVersion
from serving.routing.resources import Accelerators, Resources
from serving.routing.scheduler import Scheduler
from serving.settings import Settings
from serving.workers.listener import WorkerListener
from serving.workers.process import Worker
from serving.workers.supervisor import WorkerPool
from tests.support.stub_worker import Stub, stub


class PingFailsTwice(Worker):
    """A real worker on a real stub process, whose first two pings raise."""

    failures = 0

    def ping(self, timeout: float) -> None:
        if self.failures < 2:
            self.failures += 1
            raise RuntimeError("injected ping failure")
        super().ping(timeout)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ww-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_failing_ping_is_logged_and_the_loop_goes_on(short_dir: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        settings = Settings()
        listener = WorkerListener(short_dir / "unused.sock")
        manager = ModelManager(settings, short_dir, listener,
                               Resources(settings, accelerators=Accelerators(None, 0)))
        pool = WorkerPool("stub/1.0", lambda slot, placement: None,  # type: ignore[arg-type]
                          listener, on_ready=lambda w: None, on_gone=lambda w: None,
                          startup_timeout=60)
        manager.registry.add(ModelVersion(
            name="stub", version="1.0", url="stub.mar", handler="h", runtime="python",
            archive=UnpackedArchive(Manifest("stub", "1.0", "h"), short_dir, short_dir),
            settings=ModelSettings(), model_yaml={}, pool=pool,
            scheduler=Scheduler(Batcher(1, 0.0, 10), None)))
        async with stub(short_dir, "echo", worker_class=PingFailsTwice, name="flaky") as flaky, \
                stub(short_dir, "echo", name="steady") as steady:
            pool.workers = {flaky.worker.id: flaky.worker, steady.worker.id: steady.worker}
            loop = asyncio.create_task(manager.watch_workers(interval=0.02, timeout=30))
            try:
                await steady.wait(lambda: pings(steady) >= 3, "the other worker's pings")
                await flaky.wait(lambda: pings(flaky) >= 1, "pings after the failures")
                assert not loop.done()
            finally:
                loop.cancel()
            assert flaky.worker.failures == 2 and not flaky.exits and not steady.exits

    with caplog.at_level(logging.ERROR, logger="serving.routing.manager"):
        uvloop.run(body())
    assert caplog.text.count("pinging worker stub-flaky of stub/1.0 failed") == 2
    assert "RuntimeError: injected ping failure" in caplog.text


def pings(s: Stub) -> int:
    return s.lines().count("PING")

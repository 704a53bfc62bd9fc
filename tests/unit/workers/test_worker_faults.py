"""A worker that breaks the protocol, through the real Worker, listener and socket, with a stub
worker process in place of the handler's: every request answered once, the worker replaced."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvloop

from serving.errors import ServingError
from serving.types import InferenceRequest, InferenceResponse, Input
from serving.workers.listener import WorkerListener
from serving.workers.process import Worker, WorkerSpec, WorkerState

ROOT = Path(__file__).resolve().parents[3]
Result = list[InferenceResponse] | ServingError


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A Unix socket path must fit in 108 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="wf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Stub:
    """A started Worker whose process is tests/unit/workers/stub_worker.py."""

    def __init__(self, worker: Worker, exits: list[Worker], log: Path) -> None:
        self.worker = worker
        self.exits = exits
        self.log = log

    def lines(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    async def run(self, requests: list[InferenceRequest], timeout: float | None = None
                  ) -> tuple[Result, list[Result]]:
        """Send one batch; its result, and every call of its callback so far."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        calls: list[Result] = []

        def done(result: Result) -> None:
            calls.append(result)
            if not fut.done():
                fut.set_result(result)

        self.worker.run(requests, done, timeout)
        return await asyncio.wait_for(fut, 30), calls

    async def wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)


@asynccontextmanager
async def stub(folder: Path, mode: str, env: dict[str, str] | None = None,
               max_response_size: int | None = None) -> AsyncIterator[Stub]:
    listener = WorkerListener(folder / "w.sock")
    await listener.start()
    log = folder / "stub.log"
    env = {"STUB_MODE": mode, "PYTHONPATH": str(ROOT), "STUB_LOG": str(log), **(env or {})}
    spec = WorkerSpec(load={}, env=env, module="tests.unit.workers.stub_worker",
                      max_response_size=max_response_size)
    exits: list[Worker] = []
    worker = Worker("9999", 0, spec, listener, on_idle=lambda w: None, on_exit=exits.append)
    try:
        await worker.start(timeout=60)
        yield Stub(worker, exits, log)
    finally:
        worker.kill()
        await listener.close()


def requests(n: int, size: int = 8) -> list[InferenceRequest]:
    return [InferenceRequest(f"r{i}", [Input("body", "application/octet-stream",
                                             f"{i:0{size}d}".encode())]) for i in range(n)]


@pytest.mark.parametrize("mode", ["garbage", "bad-json", "unknown-id", "wrong-count",
                                  "missing-status", "other-batch", "gateway-kind"])
def test_a_malformed_result_answers_the_batch_and_replaces_the_worker(short_dir: Path,
                                                                      mode: str) -> None:
    async def body() -> None:
        async with stub(short_dir, mode) as s:
            result, calls = await s.run(requests(3), timeout=60)
            assert isinstance(result, ServingError) and result.code == 502
            assert result.type_name == "WorkerDiedException"
            # the stub itself would never exit: the gateway killed it, and said it is gone
            await s.wait(lambda: s.worker.exit_code is not None, "the worker to be killed")
            assert s.exits == [s.worker] and s.worker.state == WorkerState.DEAD
            assert len(calls) == 1

    uvloop.run(body())


def test_a_worker_of_another_protocol_version_is_refused(short_dir: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    async def body() -> None:
        with pytest.raises(ServingError, match="protocol 2, this server speaks 1"):
            async with stub(short_dir, "version"):
                pass

    with caplog.at_level(logging.ERROR, logger="serving.workers.listener"):
        uvloop.run(body())
    assert "speaks worker protocol 2, this server speaks 1; refusing it" in caplog.text
    assert not (short_dir / "stub.log").exists()  # it was sent nothing


@pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_batch_of_2000_requests_round_trips(short_dir: Path, runner: Callable[..., None]
                                              ) -> None:
    async def body() -> None:
        async with stub(short_dir, "echo") as s:
            batch = requests(2000, size=40)
            result, _ = await s.run(batch, timeout=60)
            assert not isinstance(result, ServingError), result
            assert [r.body for r in result] == [r.inputs[0].value for r in batch]
            assert s.worker.state == WorkerState.READY and not s.exits

    runner(body())


def test_a_4_gib_answer_is_never_buffered(short_dir: Path) -> None:
    sent = 64 * 1024 * 1024  # of the 4 GiB the stub's frame header declares

    async def body() -> None:
        async with stub(short_dir, "huge", max_response_size=1000,
                        env={"STUB_HUGE_SEND": str(sent)}) as s:
            tracemalloc.start()
            try:
                result, calls = await s.run(requests(2), timeout=60)
                assert isinstance(result, ServingError) and result.code == 500
                assert "exceeds max_response_size (1000 bytes per response)" in result.message
                await s.wait(lambda: "SENT" in s.lines(), "the stub to send its bytes")
                await asyncio.sleep(0)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < sent / 4, f"the gateway held {peak} bytes"
            # the worker is kept: what it still sends of that frame is skipped
            assert s.worker.state == WorkerState.READY and not s.exits and len(calls) == 1

    uvloop.run(body())

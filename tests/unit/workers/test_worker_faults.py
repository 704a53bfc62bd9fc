"""A worker that breaks the protocol, through the real Worker, listener and socket, with a stub
worker process in place of the handler's: every request answered once, the worker replaced."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from serving.errors import ServingError
from serving.types import InferenceRequest, Input
from serving.workers.ipc import PROTOCOL_VERSION
from serving.workers.spec import WorkerState
from tests.support.stub_worker import stub


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A Unix socket path must fit in 108 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="wf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
        with pytest.raises(ServingError, match=f"protocol {PROTOCOL_VERSION + 1}, this server "
                                               f"speaks {PROTOCOL_VERSION}"):
            async with stub(short_dir, "version"):
                pass

    with caplog.at_level(logging.ERROR, logger="serving.workers.listener"):
        uvloop.run(body())
    assert (f"speaks worker protocol {PROTOCOL_VERSION + 1}, this server speaks "
            f"{PROTOCOL_VERSION}; refusing it") in caplog.text
    assert not (short_dir / "w.log").exists()  # it was sent nothing


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


def test_a_metrics_flush_the_worker_never_answers_ends_when_it_dies(short_dir: Path) -> None:
    # A scrape waits for the workers' handler metrics: a worker that dies instead of
    # answering must not leave it waiting (the stub ignores FLUSH).
    async def body() -> None:
        async with stub(short_dir, "echo") as s:
            flushed = s.worker.flush_metrics()
            assert flushed is not None
            await asyncio.sleep(0.2)
            assert not flushed.done()
            s.worker.kill()
            await asyncio.wait_for(flushed, 30)
            assert s.worker.flush_metrics() is None  # nothing to ask any more

    uvloop.run(body())

"""The default send-ahead depth through the real Worker, listener and socket (a stub worker
process answers): it follows the worker's batch times, and batches held ahead start in
order, each told once, each answered once."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from serving.errors import ServingError
from serving.settings import DEFAULT_MAX_INFLIGHT_BATCHES
from serving.types import InferenceRequest, InferenceResponse, Input
from serving.workers.sendahead import MIN_SEND_AHEAD_DEPTH, SEND_AHEAD_BUDGET_S
from tests.support.stub_worker import stub


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))  # a socket path fits 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_depth_follows_batch_times_and_held_batches_start_in_order(short_dir: Path
                                                                       ) -> None:
    async def body() -> None:
        async with stub(short_dir, "echo") as s:
            w = s.worker
            assert w.max_inflight == MIN_SEND_AHEAD_DEPTH  # nothing measured: one ahead
            for _ in range(30):                            # fast batches: up to the cap
                w._adapt_depth(SEND_AHEAD_BUDGET_S / 100)
            assert w.max_inflight == DEFAULT_MAX_INFLIGHT_BATCHES
            events: list[str] = []
            answers: dict[int, list[InferenceResponse] | ServingError] = {}
            sent = 0
            while w.has_room:
                i = sent

                def done(result: list[InferenceResponse] | ServingError, i: int = i) -> None:
                    events.append(f"done {i}")
                    answers[i] = result

                def started(i: int = i) -> None:
                    events.append(f"start {i}")

                req = InferenceRequest(f"r{i}", [Input("body", "application/octet-stream",
                                                       str(i).encode())])
                w.run([req], done, 60, None, started if w.busy else None)
                sent += 1
            assert sent == DEFAULT_MAX_INFLIGHT_BATCHES == w.inflight_batches
            await s.wait(lambda: len(answers) == sent, "every batch answered")
            # Each batch held ahead starts, once, as the one before it is answered.
            assert events == [e for i in range(1, sent)
                              for e in (f"start {i}", f"done {i - 1}")] + [f"done {sent - 1}"]
            for i in range(sent):
                result = answers[i]
                assert not isinstance(result, ServingError), result
                assert [r.body for r in result] == [str(i).encode()]
            for _ in range(30):                            # slow batches: back to one ahead
                w._adapt_depth(SEND_AHEAD_BUDGET_S * 10)
            assert w.max_inflight == MIN_SEND_AHEAD_DEPTH

    uvloop.run(body())

"""Streaming handlers on a real server: a handler archive that calls TorchServe's
`send_intermediate_predict_response`, read by real HTTP clients chunk by chunk."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.support.archives import build_mar
from tests.support.polling import wait_for
from tests.support.scrape import scrape
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def ledger(server: ServerProcess, store: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Path:
    """The `stream` model (stream_handler.py), and the file where it notes each token."""
    path = tmp_path_factory.mktemp("stream") / "ledger.txt"
    build_mar(store, "stream", "stream_handler.py",
              config=f"minWorkers: 1\nresponseTimeout: 120\nledger: {json.dumps(str(path))}\n")
    r = server.management.post("/models", params={"url": "stream.mar"})
    assert r.status_code == 200, r.text
    return path


def url(server: ServerProcess, path: str = "/predictions/stream") -> str:
    return f"http://127.0.0.1:{server.inference_port}{path}"


async def next_chunk(response: aiohttp.ClientResponse) -> bytes:
    """One whole HTTP chunk of a chunked response (b"" at the end)."""
    data = b""
    while True:
        piece, end_of_chunk = await response.content.readchunk()
        data += piece
        if end_of_chunk or not piece:
            return data


def tokens(ledger: Path, tag: str) -> int:
    if not ledger.exists():
        return 0
    return sum(1 for line in ledger.read_text().splitlines() if line.startswith(f"{tag} "))


def test_each_intermediate_answer_is_a_chunk_sent_as_it_comes(server: ServerProcess,
                                                              ledger: Path, tmp_path: Path):
    go = tmp_path / "go"  # the handler sends its second token only once this exists

    async def scenario() -> list[bytes]:
        async with aiohttp.ClientSession() as session, session.post(
                url(server), json={"tokens": 3, "wait_for": str(go)},
                headers={"x-request-id": "stream-1"},
                timeout=aiohttp.ClientTimeout(total=60)) as r:
            assert r.status == 200
            assert r.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in r.headers
            assert r.headers["x-request-id"] == "stream-1"
            assert r.headers["ts_stream_next"] == "true"  # TorchServe's mark, as it sends it
            # The first token arrives while the handler still waits: it was not buffered.
            chunks = [await asyncio.wait_for(next_chunk(r), 30)]
            go.touch()
            while chunk := await next_chunk(r):
                chunks.append(chunk)
            return chunks

    assert asyncio.run(scenario()) == [b"t0", b"t1", b"t2", b"end"]


def test_a_client_reading_the_whole_body_gets_every_answer_in_order(server: ServerProcess,
                                                                    ledger: Path):
    r = server.inference.post("/predictions/stream", json={"tokens": 4})
    assert r.status_code == 200, r.text
    assert r.content == b"t0t1t2t3end"
    # A non-streaming handler still answers with Content-Length, no chunks.
    plain = server.inference.post("/predictions/stream", json={"tokens": 0})
    assert plain.content == b"end" and plain.headers["content-length"] == "3"


def test_kserve_v1_takes_the_final_answer_of_a_streaming_handler(server: ServerProcess,
                                                                 ledger: Path):
    r = server.inference.post("/v1/models/stream:predict",
                              json={"instances": [{"tokens": 2}, {"tokens": 3}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": ["end", "end"]}


def test_an_error_after_the_first_chunk_truncates_the_response(server: ServerProcess,
                                                               ledger: Path):
    async def scenario() -> tuple[bytes, bytes]:
        async with aiohttp.ClientSession() as session, session.post(
                url(server), json={"tokens": 3, "fail_after": 1},
                timeout=aiohttp.ClientTimeout(total=60)) as r:
            assert r.status == 200  # sent with the first token, before the failure
            first = await next_chunk(r)
            rest = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                while chunk := await next_chunk(r):
                    rest += chunk
            return first, rest

    first, rest = asyncio.run(scenario())
    assert first == b"t0"
    assert json.loads(rest)["message"] == "Prediction failed"
    # The worker is fine and the next request is answered whole.
    assert server.inference.post("/predictions/stream", json={"tokens": 1}).content == b"t0end"


def test_a_streamed_answer_counts_once_in_its_status_class(server: ServerProcess,
                                                           ledger: Path):
    before = scrape(server).value("Requests2XX_total", Level="Host")
    assert server.inference.post("/predictions/stream", json={"tokens": 3}).content \
        == b"t0t1t2end"
    assert scrape(server).value("Requests2XX_total", Level="Host") - before == 1


def test_a_client_going_away_stops_the_stream_and_the_handler(server: ServerProcess,
                                                              ledger: Path):
    async def scenario() -> list[bytes]:
        async with aiohttp.ClientSession() as session:
            r = await session.post(url(server), json={"tokens": 200, "sleep": 0.05,
                                                      "tag": "gone"},
                                   timeout=aiohttp.ClientTimeout(total=60))
            chunks = [await next_chunk(r), await next_chunk(r)]
            r.close()  # drops the connection mid-stream
            return chunks

    assert asyncio.run(scenario()) == [b"t0", b"t1"]
    # The handler is stopped at its next token after the gateway notices, long before its
    # 200 tokens (10 s); the worker then serves the next request.
    wait_for(lambda: server.inference.post("/predictions/stream",
                                           json={"tokens": 1, "tag": "after"},
                                           timeout=60).content == b"t0end", timeout=60)
    assert 2 <= tokens(ledger, "gone") < 100
    assert tokens(ledger, "after") == 1
    assert "every client of the batch went away" in server.log()

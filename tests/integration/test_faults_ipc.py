"""Worker protocol limits, real server: answers over max_response_size, 2,000-request batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.archives import build_mar
from tests.support.server import ServerProcess

LIMIT = 4096


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    build_mar(store, "shaped", "behaviour_handler.py", config="minWorkers: 1\nbatchSize: 1\n")
    build_mar(store, "wide", "behaviour_handler.py",
              config="minWorkers: 1\nbatchSize: 2000\nmaxBatchDelay: 60000\n"
                     "jobQueueSize: 4000\n")
    folder = tmp_path_factory.mktemp("faults-ipc")
    cfg = folder / "config.properties"
    cfg.write_text(f"max_response_size={LIMIT}\nmax_kserve_instances=2000\njob_queue_size=2000\n")
    with ServerProcess(folder / "server.log", "--models", "shaped.mar,wide.mar",
                       model_store=store, ts_config=cfg) as srv:
        srv.wait_ready(models=("shaped", "wide"))
        yield srv


def pids(server: ServerProcess, name: str) -> list[int]:
    return [w["pid"] for w in server.management.get(f"/models/{name}").json()[0]["workers"]]


@pytest.mark.parametrize("size", [LIMIT + 1, 50 * LIMIT])
def test_an_answer_over_max_response_size_is_a_500_and_the_worker_stays(
        server: ServerProcess, size: int) -> None:
    before = pids(server, "shaped")
    r = server.inference.post("/predictions/shaped", json={"return": "big", "size": size})
    assert r.status_code == 500
    assert r.json()["type"] == "InternalServerException"
    assert "exceeds max_response_size" in r.json()["message"]
    # the frame's bytes were skipped, not misread: the next answer is whole, from the same worker
    ok = server.inference.post("/predictions/shaped", json={"echo": "after"})
    assert ok.status_code == 200 and ok.json()["echo"] == "after"
    assert pids(server, "shaped") == before


def test_a_batch_of_2000_requests_is_answered(server: ServerProcess) -> None:
    before = pids(server, "wide")
    # KServe v1 turns each instance into its own request: 2,000 of them fill one batch.
    r = server.inference.post("/v1/models/wide:predict", json={"instances": [{}] * 2000})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 2000
    assert {p["batch"] for p in predictions} == {2000}
    assert sorted(p["item"] for p in predictions) == list(range(2000))
    assert pids(server, "wide") == before

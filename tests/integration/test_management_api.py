"""The management API: register, scale, describe, list, versions, unregister."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.support.archives import build_mar
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def archives(store: Path) -> Path:
    build_mar(store, "fn", "fn_handler.py")
    build_mar(store, "multi", "behaviour_handler.py", version="1.0", file_name="multi-v1.mar")
    build_mar(store, "multi", "behaviour_handler.py", version="2.0", file_name="multi-v2.mar")
    build_mar(store, "configured", "fn_handler.py",
              config="minWorkers: 2\nmaxWorkers: 3\nbatchSize: 4\nmaxBatchDelay: 50\n"
                     "responseTimeout: 30\n")
    return store


def pids(server: ServerProcess, name: str) -> list[int]:
    return [w["pid"] for w in server.management.get(f"/models/{name}").json()[0]["workers"]]


def test_register_scale_describe_unregister(server: ServerProcess, archives: Path):
    r = server.management.post("/models", params={"url": "fn.mar", "initial_workers": 1})
    assert r.status_code == 200
    assert r.json() == {"status": 'Model "fn" Version: 1.0 registered with 1 initial workers'}

    d = server.management.get("/models/fn").json()
    assert isinstance(d, list) and len(d) == 1
    d = d[0]
    for key in ("modelName", "modelVersion", "modelUrl", "runtime", "minWorkers", "maxWorkers",
                "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout", "status",
                "loadedAtStartup", "workers", "jobQueueStatus"):
        assert key in d
    assert (d["modelName"], d["modelVersion"], d["modelUrl"]) == ("fn", "1.0", "fn.mar")
    assert d["loadedAtStartup"] is False
    assert d["jobQueueStatus"] == {"remainingCapacity": 100, "pendingRequests": 0}
    (worker,) = d["workers"]
    assert worker["status"] == "READY" and psutil.pid_exists(worker["pid"])
    first_pid = worker["pid"]

    bad = server.management.get("/models/fn", params={"verbose": "1"})
    assert bad.status_code == 400 and "verbose" in bad.json()["message"]
    custom = server.management.get("/models/fn/1.0", params={"customized": "true"})
    assert custom.status_code == 400 and "customized" in custom.json()["message"]

    r = server.management.put("/models/fn", params={"min_worker": 3, "synchronous": "true"})
    assert r.status_code == 200 and r.json() == {"status": "Workers scaled to 3 for model: fn"}
    now = pids(server, "fn")
    assert len(now) == 3 and first_pid in now  # scaling up keeps the running worker

    r = server.management.put("/models/fn", params={"min_worker": 1, "max_worker": 1})
    assert r.status_code == 202 and r.json() == {"status": "Processing worker updates..."}
    deadline = time.monotonic() + 30
    while len(pids(server, "fn")) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pids(server, "fn")) == 1
    stopped = [p for p in now if p not in pids(server, "fn")]
    assert len(stopped) == 2 and pids_gone_after(stopped) == []
    assert server.inference.post("/predictions/fn", content=b"x").status_code == 200

    r = server.management.delete("/models/fn")
    assert r.status_code == 200 and r.json() == {"status": 'Model "fn" unregistered'}
    assert server.management.get("/models/fn").status_code == 404
    assert server.inference.post("/predictions/fn", content=b"x").status_code == 404
    assert pids_gone_after(now) == []


def pids_gone_after(candidates: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = candidates
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != "zombie"]
        time.sleep(0.1)
    return alive


def test_model_config_yaml_applies_and_registration_overrides(server: ServerProcess,
                                                               archives: Path):
    server.management.post("/models", params={"url": "configured.mar"}).raise_for_status()
    d = server.management.get("/models/configured").json()[0]
    assert (d["minWorkers"], d["maxWorkers"], d["batchSize"], d["maxBatchDelay"],
            d["responseTimeout"]) == (2, 3, 4, 50, 30)
    assert len(d["workers"]) == 2
    server.management.delete("/models/configured").raise_for_status()
    server.management.post("/models", params={
        "url": "configured.mar", "batch_size": 2, "max_batch_delay": 7,
        "initial_workers": 1}).raise_for_status()
    d = server.management.get("/models/configured").json()[0]
    assert (d["minWorkers"], d["batchSize"], d["maxBatchDelay"]) == (1, 2, 7)
    server.management.delete("/models/configured").raise_for_status()


def test_versions_and_set_default(server: ServerProcess, archives: Path):
    for url in ("multi-v1.mar", "multi-v2.mar"):
        server.management.post("/models", params={"url": url}).raise_for_status()
    dup = server.management.post("/models", params={"url": "multi-v2.mar"})
    assert dup.status_code == 409 and dup.json()["type"] == "ConflictStatusException"

    both = server.management.get("/models/multi/all").json()
    assert [d["modelVersion"] for d in both] == ["1.0", "2.0"]
    assert server.management.get("/models/multi/2.0").json()[0]["modelVersion"] == "2.0"
    # The first version registered is the default.
    assert server.management.get("/models/multi").json()[0]["modelVersion"] == "1.0"
    pid1 = pids(server, "multi/1.0")
    pid2 = pids(server, "multi/2.0")
    assert pid1 != pid2

    r = server.management.put("/models/multi/2.0/set-default")
    assert r.status_code == 200
    assert server.management.get("/models/multi").json()[0]["modelVersion"] == "2.0"
    assert server.inference.post("/predictions/multi", json={}).status_code == 200
    assert server.inference.post("/predictions/multi/1.0", json={}).status_code == 200
    missing = server.inference.post("/predictions/multi/9.9", json={})
    assert missing.status_code == 404
    assert missing.json()["type"] == "ModelVersionNotFoundException"
    assert server.management.put("/models/multi/9.9/set-default").status_code == 404

    refused = server.management.delete("/models/multi/2.0")
    assert refused.status_code == 400 and "default version" in refused.json()["message"]
    server.management.delete("/models/multi/1.0").raise_for_status()
    left = server.management.get("/models/multi/all").json()
    assert [d["modelVersion"] for d in left] == ["2.0"]
    server.management.delete("/models/multi").raise_for_status()
    assert server.management.get("/models/multi").status_code == 404


def test_list_with_pagination(server: ServerProcess, store: Path):
    for name in ("list-a", "list-b", "list-c"):
        build_mar(store, name, "fn_handler.py")
        server.management.post("/models", params={"url": f"{name}.mar",
                                                  "initial_workers": 0}).raise_for_status()
    everything = server.management.get("/models").json()
    names = [m["modelName"] for m in everything["models"]]
    assert {"list-a", "list-b", "list-c"} <= set(names) and names == sorted(names)
    assert "nextPageToken" not in everything
    first = server.management.get("/models", params={"limit": 2}).json()
    assert len(first["models"]) == 2
    rest = server.management.get("/models", params={
        "limit": 100, "next_page_token": first["nextPageToken"]}).json()
    assert [m["modelName"] for m in first["models"] + rest["models"]] == names
    assert first["models"][0] == {"modelName": names[0], "modelUrl": f"{names[0]}.mar"}


@pytest.mark.parametrize(("method", "path", "params", "needle"), [
    ("post", "/models", {}, "url: parameter is required"),
    ("post", "/models", {"url": "fn.mar", "batch_size": "eight"},
     "batch_size: expected an integer"),
    ("post", "/models", {"url": "fn.mar", "batch_size": 0}, "batch_size: must be at least 1"),
    ("post", "/models", {"url": "fn.mar", "synchronous": "maybe"}, "synchronous: expected true"),
    ("post", "/models", {"url": "fn.mar", "bogus": 1}, "unknown parameter(s): bogus"),
    ("post", "/models", {"url": "../fn.mar"}, "url: must be the name of an archive"),
    ("post", "/models", {"url": "nothing.mar"}, "no archive named 'nothing.mar'"),
    ("get", "/models", {"limit": -1}, "limit: must be at least 1"),
])
def test_bad_parameters_get_400_naming_the_parameter(
        server: ServerProcess, archives: Path, method: str, path: str, params: dict,
        needle: str):
    r = server.management.request(method, path, params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == 400 and body["type"] == "BadRequestException"
    assert needle in body["message"]


@pytest.mark.parametrize("runtime", ["cpp", "LSP", "java", "python2"])
def test_a_runtime_that_is_not_python_is_400_naming_it(server: ServerProcess,
                                                       archives: Path, runtime: str):
    # Refused before the archive is looked at, as TorchServe does (its 400 for an invalid
    # RuntimeType comes before its 404 for a missing archive).
    for url in ("fn.mar", "nothing.mar"):
        r = server.management.post("/models", params={"url": url, "model_name": "rt",
                                                      "runtime": runtime})
        assert r.status_code == 400, r.text
        assert r.json()["type"] == "BadRequestException"
        assert f"runtime {runtime!r} cannot serve archive {url}" in r.json()["message"]
    json_body = server.management.post("/models", json={"url": "fn.mar", "runtime": runtime})
    assert json_body.status_code == 400 and f"runtime {runtime!r}" in json_body.text
    assert server.management.get("/models/rt").status_code == 404


@pytest.mark.parametrize(("runtime", "described"), [
    ("python", "python"), ("python3", "python3"), ("Python3", "python3")])
def test_a_python_runtime_is_accepted_and_described(server: ServerProcess, archives: Path,
                                                    runtime: str, described: str):
    r = server.management.post("/models", params={"url": "fn.mar", "model_name": "rt",
                                                  "runtime": runtime, "initial_workers": 0})
    assert r.status_code == 200, r.text
    try:
        assert server.management.get("/models/rt").json()[0]["runtime"] == described
    finally:
        server.management.delete("/models/rt").raise_for_status()


def test_scale_rejects_max_below_min(server: ServerProcess, archives: Path):
    server.management.post("/models", params={"url": "fn.mar", "model_name": "scaled",
                                              "initial_workers": 1}).raise_for_status()
    r = server.management.put("/models/scaled", params={"min_worker": 3, "max_worker": 1})
    assert r.status_code == 400 and "max_worker" in r.json()["message"]
    server.management.delete("/models/scaled").raise_for_status()


def test_unknown_model_is_404(server: ServerProcess):
    for method, path in (("get", "/models/nope"), ("put", "/models/nope"),
                         ("delete", "/models/nope")):
        r = server.management.request(method, path)
        assert r.status_code == 404
        assert r.json() == {"code": 404, "type": "ModelNotFoundException",
                            "message": "Model not found: nope"}


def test_a_scale_up_that_fails_leaves_the_model_describing_what_runs(server: ServerProcess,
                                                                     store: Path,
                                                                     tmp_path: Path):
    marker = tmp_path / "fail-now"
    build_mar(store, "marker", "marker_init_handler.py", config=f"fail_marker: {marker}\n")
    r = server.management.post("/models", params={"url": "marker.mar", "initial_workers": 1})
    assert r.status_code == 200, r.text
    marker.touch()  # workers started from now on fail to initialise
    r = server.management.put("/models/marker", params={"min_worker": 3, "synchronous": "true"})
    assert r.status_code >= 400 and "fail marker" in r.json()["message"]
    d = server.management.get("/models/marker").json()[0]
    assert d["minWorkers"] == 1 and len(d["workers"]) == 1 and d["status"] == "Healthy"
    assert server.inference.get("/ping").json() == {"status": "Healthy"}
    assert server.inference.post("/predictions/marker", content=b"x").json() == {"ok": True}
    assert server.management.delete("/models/marker").status_code == 200


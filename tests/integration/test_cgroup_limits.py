"""A real server inside (fake) container limits: `cgroup_root` points at a cgroup v2 tree with
a 1-CPU quota and a memory limit that is already used up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.archives import build_mar
from tests.support.server import ServerProcess

GiB = 2**30


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2+ CPUs to see a quota")
def test_quota_bounds_threads_and_memory_limit_refuses_a_worker(store: Path, tmp_path: Path):
    root = tmp_path / "cgroup-root"
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("0::/\n")
    cg = root / "sys/fs/cgroup"
    cg.mkdir(parents=True)
    files = {"cgroup.controllers": "cpuset cpu memory", "cpu.max": "100000 100000",
             "memory.max": str(GiB), "memory.current": str(int(0.9 * GiB)),
             "memory.stat": "anon 1\ninactive_file 0\n"}
    for name, text in files.items():
        (cg / name).write_text(text + "\n")
    cfg = tmp_path / "config.properties"
    cfg.write_text(f"cgroup_root={root}\n")
    build_mar(store, "quota", "echo_handler.py", config="minWorkers: 1\n")
    with ServerProcess(tmp_path / "log", "--models", "quota.mar", model_store=store,
                       ts_config=cfg) as srv:
        srv.wait_ready(models=("quota",))
        (worker,) = srv.management.get("/models/quota").json()[0]["workers"]
        # One CPU of quota: one thread on one core, not one per CPU of the machine.
        assert worker["threads"] == 1 and "," not in worker["cores"] and "-" not in worker["cores"]
        assert "CPU quota (1 CPUs)" in srv.log()
        r = srv.management.put("/models/quota", params={"min_worker": 2, "synchronous": "true"})
        assert r.status_code == 507, r.text
        body = r.json()
        assert body["type"] == "InsufficientStorageException"
        assert "memory limit of 1024 MiB" in body["message"]
        assert len(srv.management.get("/models/quota").json()[0]["workers"]) == 1
        assert srv.inference.get("/ping").status_code == 200  # what runs is the minimum now
        assert srv.inference.post("/predictions/quota", json={"x": 1}).status_code == 200

"""Server-wide resources: launcher args, start-up sizing, and accelerator device assignment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.errors import ArchiveError, ConfigError
from serving.routing.resources import Accelerators, Resources
from serving.settings import Settings
from serving.workers.pinning import find_allocator
from tests.unit.routing.test_topology import (
    four_uneven_nodes,
    one_socket_ht,
    this_machine_like,
    two_socket,
)

NO_GPU = Accelerators(None, 0)


def test_cpu_launcher_args_map_onto_placement(tmp_path: Path):
    settings = Settings(cpu_launcher_enable=True,
                        cpu_launcher_args="--use_logical_core --ninstances 4 --node_id 1")
    res = Resources(settings, two_socket(tmp_path), NO_GPU)
    assert res.launcher_instances == 4
    policy = res.policy_for({})
    assert policy.enabled is True and policy.use_logical_cores and policy.nodes == [1]
    placements = res.place("m", 4, policy)
    assert {p.node for p in placements} == {1} and len({p.cpus for p in placements}) == 4
    with pytest.raises(ConfigError, match="--bogus"):
        Resources(Settings(cpu_launcher_enable=True, cpu_launcher_args="--bogus"),
                  two_socket(tmp_path / "b"), NO_GPU)


def test_startup_sizing_shares_cores_evenly_or_not_at_all(tmp_path: Path):
    res = Resources(Settings(), two_socket(tmp_path), NO_GPU)
    res.plan_startup(total_workers=4)
    placements = [res.place(f"m{i}", 1, res.policy_for({}))[0] for i in range(4)]
    # 27 + 28 usable cores (one reserved for the gateway): 13 each keeps every worker on
    # one node (14 would put two workers on one node and leave the third split)
    assert [len(p.cpus) for p in placements] == [13] * 4
    assert sorted(p.node for p in placements) == [0, 0, 1, 1]
    res.startup_done()

    small = Resources(Settings(), this_machine_like(tmp_path / "s"), NO_GPU)
    small.plan_startup(total_workers=3)  # 3 workers, 2 cores: nobody is pinned
    p = small.place("m", 1, small.policy_for({}))[0]
    assert p.shared and p.threads >= 1
    # A model's own placement block still wins.
    assert small.policy_for({"placement": {"cores_per_worker": 1}}).cores_per_worker == 1
    with pytest.raises(ArchiveError, match=r"unknown key|Extra inputs"):
        small.policy_for({"placement": {"cores": 1}})


@pytest.mark.parametrize(("make", "workers", "sizes", "nodes"), [
    # one worker takes a whole node, not cores of both sockets with unbound memory
    (two_socket, 1, [28], [1]),
    (two_socket, 3, [14, 14, 14], [0, 1, 1]),
    # hyper-threads: one core (both its threads) is the gateway's, the worker gets the 7 others
    (one_socket_ht, 1, [7], [0]),
    # 6+6+4+4 cores, one reserved on node 0 (5 free there): two workers of 5, one per node
    (four_uneven_nodes, 2, [5, 5], [0, 1]),
    (four_uneven_nodes, 4, [4, 4, 4, 4], [0, 1, 2, 3]),
])
def test_startup_sizing_keeps_each_worker_on_one_node(tmp_path: Path, make, workers: int,
                                                      sizes: list[int], nodes: list[int]):
    res = Resources(Settings(), make(tmp_path), NO_GPU)
    res.plan_startup(total_workers=workers)
    placements = [res.place(f"m{i}", 1, res.policy_for({}))[0] for i in range(workers)]
    res.startup_done()
    assert [p.threads for p in placements] == sizes
    assert [p.node for p in placements] == nodes
    for p in placements:
        assert not p.shared and p.bind_memory
        assert set(p.cpus) <= {cpu for core in res.topology.physical_cores(p.node) for cpu in core}
        assert not set(p.cpus) & set(res.allocator.reserved_cpus)


def test_devices_round_robin_ids_and_isolation(tmp_path: Path):
    res = Resources(Settings(), this_machine_like(tmp_path), Accelerators("cuda", 2))
    got = [res.device_for(None, None, slot, isolate=False, owner="a") for slot in range(3)]
    assert [(d.kind, d.index, d.gpu_id) for d in got] == [("cuda", 0, 0), ("cuda", 1, 1),
                                                          ("cuda", 0, 0)]
    # The next model continues the round-robin; a restarted slot keeps its device.
    assert res.device_for(None, None, 0, isolate=False, owner="b").index == 1
    assert res.device_for(None, None, 1, isolate=False, owner="a").index == 1
    assert res.device_for(None, None, 2, isolate=False, owner="a").index == 0
    pinned = res.device_for("gpu", (1,), 0, isolate=True)
    assert (pinned.index, pinned.gpu_id, pinned.env) == (1, 0, {"CUDA_VISIBLE_DEVICES": "1"})
    assert res.device_for("cpu", None, 0, isolate=False).kind == "cpu"
    with pytest.raises(ArchiveError, match="xpu"):
        res.device_for("xpu", None, 0, isolate=False)
    with pytest.raises(ArchiveError, match="deviceIds"):
        res.device_for("cuda", (5,), 0, isolate=False)
    cpu_only = Resources(Settings(), this_machine_like(tmp_path / "c"), NO_GPU)
    assert cpu_only.device_for(None, None, 0, isolate=False).kind == "cpu"
    with pytest.raises(ArchiveError, match="no accelerator"):
        cpu_only.device_for("gpu", None, 0, isolate=False)


def test_allocator_libraries_are_looked_up_once_not_per_placement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An `ldconfig` ahead of the real one on PATH that counts its runs and lists a jemalloc.
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    fake = bin_dir / "ldconfig"
    fake.write_text(f"#!/bin/sh\necho run >> {calls}\n"
                    "printf '\\tlibjemalloc.so.2 (libc6,x86-64) => /opt/je/libjemalloc.so.2\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    if find_allocator("jemalloc", ldconfig=False) or find_allocator("tcmalloc", ldconfig=False):
        pytest.skip("an allocator is installed here: ldconfig is never asked")
    res = Resources(Settings(), one_socket_ht(tmp_path / "sys"), NO_GPU)
    runs = calls.read_text().count("run")
    assert runs == 1  # one listing for both allocators
    policy = res.policy_for({"placement": {"allocator": "jemalloc", "cores_per_worker": 1}})
    for i in range(3):
        [p] = res.place(f"m{i}", 1, policy)
        assert p.allocator == "/opt/je/libjemalloc.so.2"
    assert calls.read_text().count("run") == runs  # placing ran no ldconfig on the loop

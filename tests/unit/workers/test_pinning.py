"""Pinning applied inside real child processes, checked from inside and from the parent."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving.routing.placement import CoreAllocator, PlacementPolicy
from serving.routing.topology import read_topology
from serving.workers.pinning import (
    WorkerPlacement,
    env_for,
    find_allocator,
    library_dirs,
    spawn_env,
)

ROOT = Path(__file__).resolve().parents[3]

# The child applies the placement given as JSON, reports what it sees, then waits on stdin so
# the parent can look at it from outside.
CHILD = """
import json, os, sys
from serving.workers.pinning import WorkerPlacement
from serving.workers import pinning
placement = WorkerPlacement.from_dict(json.loads(sys.argv[1]))
report = {"lines": pinning.apply(placement, **json.loads(sys.argv[2]))}
report["affinity"] = sorted(os.sched_getaffinity(0))
report["omp"] = os.environ.get("OMP_NUM_THREADS")
try:  # the kernel's own answer: which memory policy does this thread have now?
    import ctypes
    mode = ctypes.c_int(-1)
    ctypes.CDLL("libnuma.so.1").get_mempolicy(ctypes.byref(mode), None, 0, None, 0)
    report["mempolicy"] = mode.value
except OSError:
    report["mempolicy"] = None
if sys.argv[3] == "torch":
    import torch
    report["lines"] += pinning.apply_torch_threads(placement)
    report["lines"] += pinning.apply_torch_threads(placement)
    report["torch"] = [torch.get_num_threads(), torch.get_num_interop_threads()]
print(json.dumps(report), flush=True)
sys.stdin.readline()
"""


def run_child(placement: WorkerPlacement, env: dict[str, str] | None = None,
              torch: bool = False, **kwargs: str) -> tuple[dict[str, Any], set[int]]:
    """The child's report and its affinity as the parent sees it while the child waits."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(placement.to_dict()), json.dumps(kwargs),
         "torch" if torch else "-"],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        line = child.stdout.readline()
        seen_from_parent = os.sched_getaffinity(child.pid) if line else set()
        child.communicate("\n", timeout=60)
    finally:
        child.kill()
    assert line, f"child exited with {child.returncode}"
    return json.loads(line), seen_from_parent


def plan_here() -> WorkerPlacement:
    """The last worker of a one-core-per-worker plan on this machine: a strict subset of the
    CPUs the test process may use whenever it may use more than one."""
    topo = read_topology(allowed=os.sched_getaffinity(0))
    alloc = CoreAllocator(topo, reserved_gateway_cpus=0)
    workers = alloc.allocate("m", len(topo.physical_cores()), PlacementPolicy(cores_per_worker=1))
    return workers[-1]


def libnuma_works() -> bool:
    try:
        return int(ctypes.CDLL("libnuma.so.1").numa_available()) >= 0
    except OSError:
        return False


def test_env_for_spawn() -> None:
    placement = WorkerPlacement(cpus=(4, 5, 6), node=0, threads=3)
    assert env_for(placement) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    with_je = WorkerPlacement(cpus=(4,), node=0, threads=1, allocator="/x/libjemalloc.so.2")
    assert env_for(with_je) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                "LD_PRELOAD": "/x/libjemalloc.so.2"}


def test_allocator_preload_goes_before_the_inherited_one() -> None:
    placement = WorkerPlacement(cpus=(0,), node=None, threads=1, allocator="/x/libjemalloc.so.2")
    inherited = {"LD_PRELOAD": "/opt/libprofiler.so:/opt/libasan.so", "PATH": "/bin"}
    env = spawn_env(inherited, env_for(placement))
    assert env["LD_PRELOAD"] == "/x/libjemalloc.so.2 /opt/libprofiler.so /opt/libasan.so"
    assert env["PATH"] == "/bin" and env["OMP_NUM_THREADS"] == "1"
    assert spawn_env({"LD_PRELOAD": "/x/libjemalloc.so.2"}, env_for(placement))[
        "LD_PRELOAD"] == "/x/libjemalloc.so.2"  # not twice
    assert spawn_env({}, env_for(placement))["LD_PRELOAD"] == "/x/libjemalloc.so.2"
    assert spawn_env(inherited, {})["LD_PRELOAD"] == inherited["LD_PRELOAD"]


def test_both_preloads_reach_the_child() -> None:
    libs = [next((d / name for d in library_dirs() if (d / name).exists()), None)
            for name in ("libnuma.so.1", "libbz2.so.1")]
    if None in libs:
        pytest.skip("needs libnuma.so.1 and libbz2.so.1 to stand in for the preloads")
    allocator, operators = (str(lib) for lib in libs)
    placement = WorkerPlacement(cpus=(0,), node=None, threads=1, allocator=allocator)
    env = spawn_env({**os.environ, "LD_PRELOAD": operators}, env_for(placement))
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                          env=env, capture_output=True, text=True, check=True).stdout
    assert allocator in maps and operators in maps


def test_find_allocator_in_library_dirs(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / "libtcmalloc_minimal.so.4").touch()
    assert find_allocator("tcmalloc", [first, second], ldconfig=False) == str(
        second / "libtcmalloc_minimal.so.4")
    (second / "libtcmalloc.so.4").touch()  # the full build is preferred over the minimal one
    assert find_allocator("tcmalloc", [first, second], ldconfig=False) == str(
        second / "libtcmalloc.so.4")
    assert find_allocator("jemalloc", [first, second], ldconfig=False) is None
    assert find_allocator("default") is None
    with pytest.raises(ValueError, match="unknown allocator 'mimalloc'"):
        find_allocator("mimalloc")
    assert any(str(d).endswith("-linux-gnu") for d in library_dirs())


def test_apply_pins_the_child_to_its_plan() -> None:
    placement = plan_here()
    report, from_parent = run_child(placement)
    assert report["affinity"] == list(placement.cpus)
    assert from_parent == set(placement.cpus)
    assert report["omp"] == str(placement.threads)
    memory = [line for line in report["lines"] if line.startswith("memory:")]
    if libnuma_works():
        assert memory == ["memory: bound to NUMA node 0"]
        assert report["mempolicy"] == 2  # MPOL_BIND
    else:
        assert len(memory) == 1 and "CPU affinity only" in memory[0]


def test_without_libnuma_only_the_affinity_is_set() -> None:
    placement = plan_here()
    report, from_parent = run_child(placement, libnuma="libnuma-not-installed.so.1")
    assert from_parent == set(placement.cpus)
    memory = [line for line in report["lines"] if line.startswith("memory:")]
    assert len(memory) == 1
    assert "libnuma-not-installed.so.1 cannot be loaded" in memory[0]
    assert "CPU affinity only" in memory[0]
    assert report["mempolicy"] in (None, 0)  # MPOL_DEFAULT: nothing was bound


def test_preloaded_library_is_seen_by_the_child() -> None:
    # No allocator is installed here, so libnuma stands in: what is checked is that env_for's
    # LD_PRELOAD reaches the child's dynamic loader and that apply() notices.
    path = next((d / "libnuma.so.1" for d in library_dirs() if (d / "libnuma.so.1").exists()),
                None)
    if path is None:
        pytest.skip("no libnuma.so.1 to preload")
    placement = WorkerPlacement(cpus=plan_here().cpus, node=None, threads=1, allocator=str(path))
    report, _ = run_child(placement, env=env_for(placement))
    assert f"allocator: {path} preloaded" in report["lines"]
    report, _ = run_child(placement)
    assert f"allocator: {path} is not loaded; start the worker with env_for(placement)" in (
        report["lines"])


def test_torch_threads_follow_the_plan() -> None:
    placement = plan_here()
    report, _ = run_child(placement, torch=True)
    assert report["torch"] == [placement.threads, 1]
    # A second call must not crash although torch allows the inter-op count to be set once.
    assert any("inter-op threads were already fixed at 1" in line for line in report["lines"])

"""cgroup v1 and v2 limits read from fake cgroup trees, and what placement does with them:
a CPU quota bounds cores and threads, the cpuset the CPUs, the memory limit the workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import InsufficientStorage
from serving.routing.cgroups import CgroupLimits, memory_in_use, read_cgroup_limits
from serving.routing.resources import Accelerators, Resources
from serving.routing.topology import read_topology, within_cpu_limit
from serving.settings import Settings
from tests.unit.routing.test_topology import fake_sysfs, one_socket_ht, two_socket

NO_GPU = Accelerators(None, 0)
GiB = 2**30


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def v2_tree(root: Path, cgroup: str = "/", **files: str) -> Path:
    """A unified hierarchy; `files` are written in the process's own cgroup folder
    (`cpu_max` is the file cpu.max, `cpuset_cpus_effective` cpuset.cpus.effective...)."""
    write(root / "proc/self/cgroup", f"0::{cgroup}")
    mount = root / "sys/fs/cgroup"
    write(mount / "cgroup.controllers", "cpuset cpu io memory pids")
    own = mount / cgroup.strip("/")
    own.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write(own / name.replace("_", "."), text)
    return root


def v1_tree(root: Path, cgroup: str = "/", quota_us: int = -1, period_us: int = 100000,
            cpus: str | None = None, limit: int | None = None) -> Path:
    write(root / "proc/self/cgroup",
          f"12:memory:{cgroup}\n4:cpu,cpuacct:{cgroup}\n3:cpuset:{cgroup}\n1:name=systemd:/")
    mount = root / "sys/fs/cgroup"
    cpu = mount / "cpu,cpuacct" / cgroup.strip("/")
    write(cpu / "cpu.cfs_quota_us", str(quota_us))
    write(cpu / "cpu.cfs_period_us", str(period_us))
    if cpus is not None:
        write(mount / "cpuset" / cgroup.strip("/") / "cpuset.cpus", cpus)
    memory = mount / "memory" / cgroup.strip("/")
    write(memory / "memory.limit_in_bytes", str(limit if limit is not None else 2**63 - 4096))
    write(memory / "memory.usage_in_bytes", str(3 * GiB))
    write(memory / "memory.stat", f"cache 100\ntotal_inactive_file {GiB}\n")
    return root


def test_v2_container_with_its_own_namespace(tmp_path: Path):
    root = v2_tree(tmp_path, cpu_max="800000 100000", cpuset_cpus_effective="0-27,56-83",
                   memory_max=str(16 * GiB), memory_current=str(5 * GiB),
                   memory_stat=f"anon 100\ninactive_file {2 * GiB}\n")
    limits = read_cgroup_limits(root)
    assert (limits.version, limits.cpu_quota, limits.cpu_limit) == (2, 8.0, 8)
    assert limits.cpuset == (*range(28), *range(56, 84))
    assert limits.memory_max == 16 * GiB
    assert memory_in_use(limits) == 3 * GiB  # the inactive file cache is reclaimable


def test_v2_no_limits_and_fractional_quota(tmp_path: Path):
    unlimited = read_cgroup_limits(v2_tree(tmp_path / "a", cpu_max="max 100000",
                                           memory_max="max"))
    assert (unlimited.version, unlimited.cpu_quota, unlimited.memory_max) == (2, None, None)
    assert unlimited.cpu_limit is None
    half = read_cgroup_limits(v2_tree(tmp_path / "b", cpu_max="50000 100000"))
    assert half.cpu_quota == 0.5 and half.cpu_limit == 1  # never 0 threads
    odd = read_cgroup_limits(v2_tree(tmp_path / "c", cpu_max="250000 100000"))
    assert odd.cpu_limit == 2  # 2.5 CPUs of time: 3 busy threads would be throttled


def test_v2_the_tightest_limit_on_the_path_wins(tmp_path: Path):
    root = v2_tree(tmp_path, "/kubepods/pod1/ctr", cpu_max="max 100000",
                   memory_max=str(8 * GiB))
    mount = root / "sys/fs/cgroup"
    write(mount / "kubepods/pod1/cpu.max", "400000 100000")
    write(mount / "kubepods/memory.max", str(4 * GiB))
    write(mount / "kubepods/pod1/ctr/cpuset.cpus.effective", "2-5")
    limits = read_cgroup_limits(root)
    assert (limits.cpu_quota, limits.memory_max, limits.cpuset) == (4.0, 4 * GiB, (2, 3, 4, 5))


def test_v2_host_path_missing_inside_the_container_reads_the_mount_top(tmp_path: Path):
    # No cgroup namespace: /proc/self/cgroup shows the host's path, the mount is the pod's.
    root = v2_tree(tmp_path, "/", cpu_max="200000 100000")
    write(root / "proc/self/cgroup", "0::/kubepods.slice/pod-x.slice/cri-y.scope")
    assert read_cgroup_limits(root).cpu_quota == 2.0


def test_v1_quota_cpuset_and_memory(tmp_path: Path):
    root = v1_tree(tmp_path, "/docker/abc", quota_us=150000, period_us=50000, cpus="0-3",
                   limit=6 * GiB)
    limits = read_cgroup_limits(root)
    assert (limits.version, limits.cpu_quota, limits.cpu_limit) == (1, 3.0, 3)
    assert limits.cpuset == (0, 1, 2, 3) and limits.memory_max == 6 * GiB
    assert memory_in_use(limits) == 2 * GiB


def test_v1_without_limits(tmp_path: Path):
    limits = read_cgroup_limits(v1_tree(tmp_path))
    assert (limits.version, limits.cpu_quota, limits.memory_max) == (1, None, None)


def test_no_cgroup_filesystem(tmp_path: Path):
    assert read_cgroup_limits(tmp_path) == CgroupLimits()


def test_this_machine_reads_without_error():
    limits = read_cgroup_limits()
    assert limits.cpu_limit is None or limits.cpu_limit >= 1


def test_a_quota_bounds_cores_and_threads(tmp_path: Path):
    # The case: 56 cores x 2 threads under an 8-CPU quota.
    big = two_socket(tmp_path / "sys")
    limited = within_cpu_limit(big, 8)
    assert len(limited.cpus) == 8 and limited.threads_per_core == 1
    assert limited.node_ids == (0,)  # whole cores of the first node: memory stays local
    assert within_cpu_limit(big, None) is big and within_cpu_limit(big, 112) is big
    res = Resources(Settings(), big, NO_GPU, CgroupLimits(version=2, cpu_quota=8.0))
    assert res.allocator.worker_core_count == 7  # one of the 8 is the gateway's
    # Unpinned workers (more workers than cores) split the quota's CPUs, never the host's.
    placements = res.place("m", 9, res.policy_for({}))
    assert sum(p.threads for p in placements) <= 9 and max(p.threads for p in placements) == 1
    (one,) = Resources(Settings(), two_socket(tmp_path / "b"), NO_GPU,
                       CgroupLimits(version=2, cpu_quota=8.0)).place("m", 1, res.policy_for({}))
    assert one.threads == 7 and len(one.cpus) == 7


def test_quota_with_hyperthreads_keeps_one_thread_per_core(tmp_path: Path):
    limited = within_cpu_limit(one_socket_ht(tmp_path), 4)
    assert [c.id for c in limited.cpus] == [0, 1, 2, 3]  # siblings 8-11 left idle


def test_cpuset_restricts_the_topology(tmp_path: Path):
    limits = read_cgroup_limits(v1_tree(tmp_path / "cg", cpus="4-7"))
    topology = read_topology(fake_sysfs(tmp_path / "sys", [8]), allowed=limits.cpuset)
    assert [c.id for c in topology.cpus] == [4, 5, 6, 7]


def test_memory_limit_refuses_workers_that_do_not_fit(tmp_path: Path):
    # 6 GiB limit, 2 GiB working set: 0.9 * 6 - 2 = 3.4 GiB of room.
    limits = read_cgroup_limits(v1_tree(tmp_path / "cg", limit=6 * GiB))
    res = Resources(Settings(), one_socket_ht(tmp_path / "sys"), NO_GPU, limits)
    res.check_memory("m/1.0", 3, GiB)  # 3 GiB fits
    res.check_memory("m/1.0", 8, None)  # no worker loaded yet: nothing to judge by
    with pytest.raises(InsufficientStorage, match=r"m/1.0: 4 more worker\(s\) need about "
                                                  r"4096 MiB .* limit of 6144 MiB"):
        res.check_memory("m/1.0", 4, GiB)
    unlimited = Resources(Settings(), one_socket_ht(tmp_path / "s2"), NO_GPU,
                          read_cgroup_limits(v1_tree(tmp_path / "cg2")))
    unlimited.check_memory("m/1.0", 1000, GiB)

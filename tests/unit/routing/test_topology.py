"""Reading CPU topology from fake sysfs trees shaped like real machines, and from this one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from serving.routing.topology import Topology, format_cpulist, parse_cpulist, read_topology


def fake_sysfs(root: Path, cores_per_node: Sequence[int], threads: int = 1, *,
               numa_dir: bool = True, offline: Sequence[int] = (),
               core_ids: Sequence[int] | None = None) -> Path:
    """A sysfs tree numbered as Linux numbers CPUs: the first thread of every core, node by node,
    then the second threads in the same order. One package per node; core ids restart on each
    package (so they repeat across packages, as on real two-socket machines)."""
    cpu_dir = root / "devices/system/cpu"
    total = sum(cores_per_node)
    index = 0
    for node, count in enumerate(cores_per_node):
        node_cpus: list[int] = []
        for core in range(count):
            ids = [index + t * total for t in range(threads)]
            for cpu in ids:
                topo = cpu_dir / f"cpu{cpu}/topology"
                topo.mkdir(parents=True)
                (topo / "physical_package_id").write_text(f"{node}\n")
                core_id = core if core_ids is None else core_ids[index]
                (topo / "core_id").write_text(f"{core_id}\n")
                (topo / "thread_siblings_list").write_text(format_cpulist(ids) + "\n")
            node_cpus += [c for c in ids if c not in offline]
            index += 1
        if numa_dir:
            (root / f"devices/system/node/node{node}").mkdir(parents=True)
            (root / f"devices/system/node/node{node}/cpulist").write_text(
                format_cpulist(node_cpus) + "\n")
    online = [c for c in range(total * threads) if c not in offline]
    (cpu_dir / "online").write_text(format_cpulist(online) + "\n")
    return root


def this_machine_like(root: Path) -> Topology:
    """The 2-CPU VM these tests run on: one node, two cores, no hyper-threads."""
    return read_topology(fake_sysfs(root, [2]))


def one_socket_ht(root: Path) -> Topology:
    """1 socket x 8 cores x 2 threads: CPU i and i+8 share a core."""
    return read_topology(fake_sysfs(root, [8], threads=2))


def two_socket(root: Path) -> Topology:
    """2 sockets x 28 cores x 2 threads, one NUMA node per socket (112 CPUs)."""
    return read_topology(fake_sysfs(root, [28, 28], threads=2))


def four_uneven_nodes(root: Path) -> Topology:
    """4 NUMA nodes of 6, 6, 4 and 4 cores, no hyper-threads."""
    return read_topology(fake_sysfs(root, [6, 6, 4, 4]))


@pytest.mark.parametrize(("text", "cpus"), [
    ("0-3,8-11,14", (0, 1, 2, 3, 8, 9, 10, 11, 14)),
    ("0-1\n", (0, 1)),
    ("5", (5,)),
    ("", ()),
    ("0-15:4", (0, 4, 8, 12)),
    ("14,0-2", (0, 1, 2, 14)),
])
def test_parse_cpulist(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["3-1", "a", "1-b", "0-3:0"])
def test_parse_cpulist_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="cpulist"):
        parse_cpulist(text)


def test_format_cpulist_is_the_inverse() -> None:
    assert format_cpulist([14, 0, 1, 2, 3, 8, 9, 10, 11]) == "0-3,8-11,14"
    assert parse_cpulist(format_cpulist(range(0, 112, 3))) == tuple(range(0, 112, 3))


def test_one_socket_with_hyper_threads(tmp_path: Path) -> None:
    topo = one_socket_ht(tmp_path)
    assert len(topo.cpus) == 16
    assert topo.nodes == {0: tuple(range(16))}
    assert topo.physical_cores() == tuple((i, i + 8) for i in range(8))
    assert topo.siblings(3) == (3, 11)
    assert topo.siblings(11) == (3, 11)
    assert topo.threads_per_core == 2


def test_two_sockets_keep_core_ids_apart(tmp_path: Path) -> None:
    topo = two_socket(tmp_path)
    assert topo.nodes == {0: tuple(range(28)) + tuple(range(56, 84)),
                          1: tuple(range(28, 56)) + tuple(range(84, 112))}
    # cpu0 and cpu28 both report core_id 0, on different packages: different cores.
    assert topo.cpu(0).core != topo.cpu(28).core
    assert topo.cpu(0).core == topo.cpu(56).core
    assert (topo.cpu(28).package, topo.cpu(28).node) == (1, 1)
    assert len(topo.physical_cores()) == 56
    assert topo.physical_cores(1)[:2] == ((28, 84), (29, 85))
    assert "2 NUMA node(s), 56 physical cores, 112 CPUs" in topo.summary()


def test_four_uneven_nodes(tmp_path: Path) -> None:
    topo = four_uneven_nodes(tmp_path)
    assert [len(topo.physical_cores(n)) for n in topo.node_ids] == [6, 6, 4, 4]
    assert topo.nodes[2] == (12, 13, 14, 15)
    assert topo.threads_per_core == 1


def test_no_numa_directory_means_one_node(tmp_path: Path) -> None:
    topo = read_topology(fake_sysfs(tmp_path, [4], threads=2, numa_dir=False))
    assert topo.nodes == {0: tuple(range(8))}
    assert {cpu.node for cpu in topo.cpus} == {0}


def test_offline_cpus_are_left_out(tmp_path: Path) -> None:
    topo = read_topology(fake_sysfs(tmp_path, [8], threads=2, offline=[15]))
    assert [cpu.id for cpu in topo.cpus] == list(range(15))
    assert topo.siblings(7) == (7,)
    assert len(topo.physical_cores()) == 8


def test_allowed_cpus_restrict_the_topology(tmp_path: Path) -> None:
    topo = read_topology(fake_sysfs(tmp_path, [28, 28], threads=2), allowed={0, 1, 56, 28})
    assert topo.nodes == {0: (0, 1, 56), 1: (28,)}
    assert topo.physical_cores() == ((0, 56), (1,), (28,))


def test_unreliable_core_ids_fall_back_to_sibling_lists(tmp_path: Path) -> None:
    # Some firmware reports core_id -1 for every CPU; the sibling lists still tell the truth.
    topo = read_topology(fake_sysfs(tmp_path, [8], threads=2, core_ids=[-1] * 8))
    assert topo.physical_cores() == tuple((i, i + 8) for i in range(8))


def test_an_empty_tree_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no usable CPU"):
        read_topology(tmp_path)


def test_this_machine() -> None:
    cpu_dir = Path("/sys/devices/system/cpu")
    topo = read_topology()
    assert [cpu.id for cpu in topo.cpus] == list(parse_cpulist((cpu_dir / "online").read_text()))
    assert sorted(c for ids in topo.nodes.values() for c in ids) == [cpu.id for cpu in topo.cpus]
    cores = topo.physical_cores()
    assert sorted(c for core in cores for c in core) == [cpu.id for cpu in topo.cpus]
    for cpu in topo.cpus:
        listed = (cpu_dir / f"cpu{cpu.id}/topology/thread_siblings_list").read_text()
        assert topo.siblings(cpu.id) == parse_cpulist(listed)
    mine = read_topology(allowed=os.sched_getaffinity(0))
    assert {cpu.id for cpu in mine.cpus} == os.sched_getaffinity(0)

"""Worker placement plans on fake machines: the plans a person would pick by hand."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.routing.placement import (
    CoreAllocator,
    PlacementPolicy,
    WorkerPlacement,
    parse_launcher_args,
)
from serving.routing.topology import Topology, format_cpulist, read_topology
from tests.unit.routing.test_topology import (
    four_uneven_nodes,
    one_socket_ht,
    this_machine_like,
    two_socket,
)

AUTO = PlacementPolicy()


def plan(placements: Sequence[WorkerPlacement]) -> list[tuple[int | None, str]]:
    return [(p.node, format_cpulist(p.cpus)) for p in placements]


def assert_no_shared_cores(topo: Topology, placements: Sequence[WorkerPlacement],
                           reserved: Sequence[int] = ()) -> None:
    seen: set[tuple[int, int]] = {topo.cpu(c).core for c in reserved}
    for p in placements:
        cores = {topo.cpu(c).core for c in p.cpus}
        assert not cores & seen, f"{p} shares a physical core"
        seen |= cores


def test_this_machine_shape(tmp_path: Path) -> None:
    topo = this_machine_like(tmp_path)
    alloc = CoreAllocator(topo)
    assert alloc.reserved_cpus == ()  # too small to give the gateway a core of its own
    assert plan(alloc.allocate("m", 2, AUTO)) == [(0, "0"), (0, "1")]
    whole = CoreAllocator(topo).allocate("m", 1, AUTO)
    assert plan(whole) == [(0, "0-1")]
    assert whole[0].threads == 2 and whole[0].bind_memory and not whole[0].shared


def test_real_machine_gets_one_core_per_worker() -> None:
    topo = read_topology(allowed=os.sched_getaffinity(0))
    alloc = CoreAllocator(topo)
    n = len(topo.physical_cores()) - len({topo.cpu(c).core for c in alloc.reserved_cpus})
    placements = alloc.allocate("m", n, PlacementPolicy(cores_per_worker=1, enabled=True))
    assert all(p.threads == 1 and len(p.cpus) == 1 and not p.shared for p in placements)
    assert_no_shared_cores(topo, placements, alloc.reserved_cpus)


def test_one_socket_reserves_core_0_for_the_gateway(tmp_path: Path) -> None:
    topo = one_socket_ht(tmp_path)
    alloc = CoreAllocator(topo)
    assert alloc.reserved_cpus == (0, 8)
    [worker] = alloc.allocate("m", 1, AUTO)
    assert plan([worker]) == [(0, "1-7")]  # one thread per core: siblings 9-15 stay idle
    assert worker.threads == 7
    logical = CoreAllocator(topo).allocate("m", 1, PlacementPolicy(use_logical_cores=True))
    assert plan(logical) == [(0, "1-7,9-15")] and logical[0].threads == 14


def test_one_socket_two_workers_split_evenly(tmp_path: Path) -> None:
    alloc = CoreAllocator(one_socket_ht(tmp_path))
    placements = alloc.allocate("m", 2, AUTO)
    assert plan(placements) == [(0, "1-3"), (0, "4-6")]
    assert [p.threads for p in placements] == [3, 3]


def test_explicit_gateway_reservation(tmp_path: Path) -> None:
    topo = one_socket_ht(tmp_path)
    assert CoreAllocator(topo, reserved_gateway_cpus=2).reserved_cpus == (0, 1, 8, 9)
    assert CoreAllocator(topo, reserved_gateway_cpus=0).reserved_cpus == ()
    with pytest.raises(ValueError, match=r"cannot reserve 8 physical cores .* has 8"):
        CoreAllocator(topo, reserved_gateway_cpus=8)
    with pytest.raises(ValueError, match="28 on its first NUMA node"):
        CoreAllocator(two_socket(tmp_path / "b"), reserved_gateway_cpus=29)


def test_two_sockets_one_worker_per_node(tmp_path: Path) -> None:
    alloc = CoreAllocator(two_socket(tmp_path))
    assert alloc.reserved_cpus == (0, 56)
    placements = alloc.allocate("m", 2, AUTO)
    assert plan(placements) == [(0, "1-27"), (1, "28-54")]
    assert [p.threads for p in placements] == [27, 27]
    logical = CoreAllocator(two_socket(tmp_path / "b")).allocate(
        "m", 2, PlacementPolicy(use_logical_cores=True))
    assert plan(logical) == [(0, "1-27,57-83"), (1, "28-54,84-110")]


def test_two_sockets_four_workers_alternate_nodes(tmp_path: Path) -> None:
    topo = two_socket(tmp_path)
    alloc = CoreAllocator(topo)
    placements = alloc.allocate("m", 4, AUTO)
    assert plan(placements) == [(0, "1-13"), (1, "28-40"), (0, "14-26"), (1, "41-53")]
    assert_no_shared_cores(topo, placements, alloc.reserved_cpus)


def test_two_sockets_one_worker_takes_the_socket_without_the_gateway(tmp_path: Path) -> None:
    assert plan(CoreAllocator(two_socket(tmp_path)).allocate("m", 1, AUTO)) == [(1, "28-55")]


@pytest.mark.parametrize(("n", "expected"), [
    (4, [(0, "1-4"), (1, "6-9"), (2, "12-15"), (3, "16-19")]),
    (3, [(0, "1-4"), (1, "6-9"), (2, "12-15")]),
    (2, [(0, "1-5"), (1, "6-10")]),
    (8, [(0, "1-2"), (1, "6-7"), (2, "12-13"), (3, "16-17"),
         (0, "3-4"), (1, "8-9"), (2, "14-15"), (3, "18-19")]),
])
def test_four_uneven_nodes(tmp_path: Path, n: int, expected: list[tuple[int, str]]) -> None:
    assert plan(CoreAllocator(four_uneven_nodes(tmp_path)).allocate("m", n, AUTO)) == expected


def test_a_worker_larger_than_any_node_spans_the_emptiest(tmp_path: Path) -> None:
    alloc = CoreAllocator(four_uneven_nodes(tmp_path))
    [worker] = alloc.allocate("big", 1, PlacementPolicy(cores_per_worker=8))
    assert plan([worker]) == [(None, "1-2,6-11")]
    assert worker.threads == 8 and not worker.bind_memory


def test_a_worker_that_fits_a_node_never_spans_two(tmp_path: Path) -> None:
    # 27 + 28 free cores hold 54, but a third 18-core worker would have to straddle the nodes.
    alloc = CoreAllocator(two_socket(tmp_path))
    with pytest.raises(ValueError, match=r"3 worker.* x 18 .* 55 free"):
        alloc.allocate("m", 3, PlacementPolicy(cores_per_worker=18, enabled=True))


def test_nodes_restrict_where_workers_go(tmp_path: Path) -> None:
    alloc = CoreAllocator(four_uneven_nodes(tmp_path))
    assert plan(alloc.allocate("m", 2, PlacementPolicy(nodes=[3, 2]))) == [
        (2, "12-15"), (3, "16-19")]
    with pytest.raises(ValueError, match=r"node\(s\) \[7\]"):
        alloc.allocate("m", 1, PlacementPolicy(nodes=[7]))


def test_two_models_never_share_a_core(tmp_path: Path) -> None:
    topo = two_socket(tmp_path)
    alloc = CoreAllocator(topo)
    first = alloc.allocate("resnet", 2, PlacementPolicy(cores_per_worker=8))
    second = alloc.allocate("bert", 2, AUTO)
    assert plan(first) == [(0, "1-8"), (1, "28-35")]
    assert plan(second) == [(0, "9-27"), (1, "36-54")]  # the rest, split evenly
    assert_no_shared_cores(topo, first + second, alloc.reserved_cpus)


def test_scaling_up_places_only_the_new_workers(tmp_path: Path) -> None:
    alloc = CoreAllocator(two_socket(tmp_path))
    policy = PlacementPolicy(cores_per_worker=4)
    first = alloc.allocate("m", 1, policy)
    more = alloc.allocate("m", 2, policy)
    assert plan(first + more) == [(0, "1-4"), (1, "28-31"), (0, "5-8")]
    assert alloc.placements("m") == first + more
    assert alloc.placements("m")[0] is first[0]


def test_scaling_up_an_auto_model_keeps_its_worker_size(tmp_path: Path) -> None:
    alloc = CoreAllocator(four_uneven_nodes(tmp_path))
    alloc.allocate("m", 2, AUTO)  # 5 cores each, on nodes 0 and 1
    assert plan(alloc.allocate("m", 1, AUTO)) == [(2, "12-15")]  # 4 fit; 5 would not


def test_release_frees_cores_for_the_next_model(tmp_path: Path) -> None:
    alloc = CoreAllocator(one_socket_ht(tmp_path))
    one_core = PlacementPolicy(cores_per_worker=1, enabled=True)
    workers = alloc.allocate("a", 7, one_core)
    with pytest.raises(ValueError, match=r"1 physical core.* 0 free"):
        alloc.allocate("b", 1, one_core)
    alloc.release(workers[2])
    assert plan(alloc.allocate("b", 1, one_core)) == [(0, "3")]
    with pytest.raises(ValueError, match="not held"):
        alloc.release(workers[2])


def test_not_enough_cores_runs_unpinned_with_a_reason(tmp_path: Path) -> None:
    alloc = CoreAllocator(one_socket_ht(tmp_path))
    placements = alloc.allocate("m", 8, AUTO)
    assert len(placements) == 8
    assert {format_cpulist(p.cpus) for p in placements} == {"1-7,9-15"}
    assert all(p.shared and p.node is None and p.threads == 1 for p in placements)
    assert placements[0].reason is not None
    assert "8 worker(s)" in placements[0].reason and "7 free" in placements[0].reason
    alloc.release(placements[0])  # holds no cores, but the caller may still hand it back
    # Pinned workers keep their cores; the unpinned ones do not count as holding any.
    assert plan(alloc.allocate("n", 1, AUTO)) == [(0, "1-7")]


def test_unpinned_threads_split_the_physical_cores(tmp_path: Path) -> None:
    alloc = CoreAllocator(two_socket(tmp_path))
    placements = alloc.allocate("first", 4, PlacementPolicy(enabled=False))
    assert all(p.shared and p.threads == 55 // 4 for p in placements)


def test_unpinned_workers_never_oversubscribe_the_cpus(tmp_path: Path) -> None:
    alloc = CoreAllocator(one_socket_ht(tmp_path))  # 7 physical cores for workers
    unpinned = PlacementPolicy(enabled=False)
    pinned = alloc.allocate("p", 1, PlacementPolicy(cores_per_worker=3))
    first = alloc.allocate("a", 2, unpinned)
    assert [p.threads for p in first] == [2, 2]  # the 4 cores the pinned worker leaves
    more = alloc.allocate("a", 1, unpinned)  # a scale-up of the same model
    assert more[0].threads == 1 and "3 already used" not in (more[0].reason or "")
    assert "1 thread(s) per unpinned worker: 7 CPU(s), 7 already used" in (more[0].reason or "")
    assert sum(p.threads for p in pinned + first + more) == 8  # 7 CPUs, at least 1 each
    for p in first:  # scaled down: their threads are free for the next one
        alloc.release(p)
    assert alloc.allocate("b", 1, unpinned)[0].threads == 3  # 7 - 3 pinned - 1 unpinned


def test_not_enough_cores_strict_raises(tmp_path: Path) -> None:
    alloc = CoreAllocator(one_socket_ht(tmp_path))
    with pytest.raises(ValueError, match=r"8 worker\(s\) x 1 physical core\(s\) = 8 asked, 7 free"):
        alloc.allocate("m", 8, PlacementPolicy(enabled=True))
    assert alloc.placements("m") == []


def test_disabled_pinning_is_unpinned(tmp_path: Path) -> None:
    [worker] = CoreAllocator(one_socket_ht(tmp_path)).allocate(
        "m", 1, PlacementPolicy(enabled=False))
    assert worker.shared and worker.node is None and worker.threads == 7
    assert worker.reason == ("CPU pinning is disabled; 7 thread(s) per unpinned worker: "
                             "7 CPU(s), 0 already used by other workers, 1 new worker(s)")


def test_core_sharing_pins_onto_busy_cores_when_asked(tmp_path: Path) -> None:
    alloc = CoreAllocator(one_socket_ht(tmp_path))
    alloc.allocate("a", 7, PlacementPolicy(cores_per_worker=1))
    shared = alloc.allocate("b", 2, PlacementPolicy(allow_core_sharing=True))
    assert plan(shared) == [(0, "1-3"), (0, "4-6")]
    assert all(p.shared and p.reason for p in shared)
    fresh = CoreAllocator(one_socket_ht(tmp_path / "b"))
    assert not fresh.allocate("b", 2, PlacementPolicy(allow_core_sharing=True))[0].shared


def test_allocator_library_is_resolved_once_found(tmp_path: Path) -> None:
    def find(name: str) -> str | None:
        return "/opt/lib/libjemalloc.so.2" if name == "jemalloc" else None

    alloc = CoreAllocator(one_socket_ht(tmp_path), find_library=find)
    [je] = alloc.allocate("a", 1, PlacementPolicy(cores_per_worker=2, allocator="jemalloc"))
    assert je.allocator == "/opt/lib/libjemalloc.so.2" and je.reason is None
    [tc] = alloc.allocate("b", 1, PlacementPolicy(cores_per_worker=2, allocator="tcmalloc"))
    assert tc.allocator is None and "tcmalloc is not installed" in (tc.reason or "")


@pytest.mark.parametrize("bad", [
    {"cores_per_worker": 2, "workers": 4}, {"cores_per_worker": 0}, {"nodes": []},
    {"nodes": [-1]}, {"enabled": "maybe"}, {"allocator": "mimalloc"},
])
def test_policy_forbids_unknown_and_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PlacementPolicy.model_validate(bad)


def test_policy_reads_config_strings() -> None:
    assert PlacementPolicy.model_validate({"enabled": "true"}).enabled is True
    assert PlacementPolicy.model_validate({"cores_per_worker": "4"}).cores_per_worker == 4


def test_placement_round_trips_through_json(tmp_path: Path) -> None:
    [worker] = CoreAllocator(two_socket(tmp_path)).allocate("m", 1, AUTO)
    data = json.loads(json.dumps(worker.to_dict()))
    assert data["cpulist"] == "28-55" and data["node"] == 1 and data["interop_threads"] == 1
    assert WorkerPlacement.from_dict(data) == worker


@pytest.mark.parametrize(("args", "fields", "instances"), [
    ("", {}, None),
    ("--use_logical_core", {"use_logical_cores": True}, None),
    ("--ninstances 4 --ncores_per_instance 8", {"cores_per_worker": 8}, 4),
    ("--use_logical_core --ncores_per_instance 8", {"use_logical_cores": True,
                                                    "cores_per_worker": 4}, None),
    ("--node_id 1 --enable_jemalloc", {"nodes": [1], "allocator": "jemalloc"}, None),
    ("--node_id=0 --enable_tcmalloc", {"nodes": [0], "allocator": "tcmalloc"}, None),
    ("--disable_numactl", {"bind_memory": False}, None),
    ("--skip-cross-node-cores --ninstances=2", {}, 2),
    ("--multi_instance --ninstances 3 --use_default_allocator", {}, 3),
    # run_cpu's modes on a 2-node machine with 55 worker cores
    ("--throughput_mode", {}, 2),
    ("--latency_mode --enable_jemalloc", {"cores_per_worker": 4, "allocator": "jemalloc"}, 13),
])
def test_cpu_launcher_args(args: str, fields: dict[str, object], instances: int | None) -> None:
    parsed = parse_launcher_args(args, threads_per_core=2, nodes=2, physical_cores=55)
    assert parsed.policy == PlacementPolicy.model_validate(fields)
    assert parsed.instances == instances
    assert parsed.ignored == ()


def test_cpu_launcher_args_with_no_effect_here_are_accepted_and_named() -> None:
    parsed = parse_launcher_args("--disable_iomp --log_path /tmp/x --ninstances 2 -m")
    assert parsed.instances == 2 and parsed.policy == PlacementPolicy()
    assert parsed.ignored == ("--disable_iomp", "--log_path /tmp/x", "-m")


@pytest.mark.parametrize(("args", "message"), [
    ("--use_logical_core --bogus_mode", "unknown flag '--bogus_mode'"),
    ("--ninstances", "--ninstances needs a count"),
    ("--ncores_per_instance two", "needs a count"),
    ("--ninstances 0", "needs a count"),
    ("--enable_jemalloc --enable_tcmalloc", "--enable_tcmalloc contradicts an earlier flag"),
    ("--disable_numactl=1", "unknown flag '--disable_numactl=1'"),
    ("--latency_mode --throughput_mode", "choose --throughput_mode or --latency_mode"),
    ("--throughput_mode --ninstances 4", "sets the instances and their cores itself"),
    ("--log_path", "--log_path needs a value"),
    ("--core_list 0-3", "unknown flag '--core_list'"),
])
def test_cpu_launcher_args_errors(args: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_launcher_args(args)

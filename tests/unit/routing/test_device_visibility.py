"""Accelerators and the host: an isolated worker on a server that was itself given a subset
of the devices (CUDA_VISIBLE_DEVICES / ZE_AFFINITY_MASK inherited) is given the device's own
name, and a GPU model's workers are placed on their devices' NUMA node."""

from __future__ import annotations

from pathlib import Path

from serving.routing.resources import Accelerators, Resources, pci_numa_nodes
from serving.settings import Settings
from tests.unit.routing.test_topology import this_machine_like, two_socket


def test_inherited_cuda_visible_devices_are_mapped(tmp_path: Path):
    res = Resources(Settings(), this_machine_like(tmp_path), Accelerators("cuda", 2),
                    environ={"CUDA_VISIBLE_DEVICES": "2, 3"})
    # torch numbers the two it sees 0 and 1; the worker must be restricted to "3", not "1".
    second = res.device_for("gpu", (1,), 0, isolate=True)
    assert (second.index, second.gpu_id, second.env) == (1, 0, {"CUDA_VISIBLE_DEVICES": "3"})
    shared = res.device_for("gpu", (1,), 0, isolate=False)
    assert (shared.gpu_id, shared.env) == (1, {})  # torch's own numbering, nothing to set


def test_inherited_ze_affinity_mask_keeps_sub_devices(tmp_path: Path):
    res = Resources(Settings(), this_machine_like(tmp_path), Accelerators("xpu", 2),
                    environ={"ZE_AFFINITY_MASK": "1.0,1.1"})
    assert res.device_for("xpu", (0,), 0, isolate=True).env == {"ZE_AFFINITY_MASK": "1.0"}
    assert res.device_for("xpu", (1,), 0, isolate=True).env == {"ZE_AFFINITY_MASK": "1.1"}


def test_nothing_inherited_keeps_torch_numbering(tmp_path: Path):
    res = Resources(Settings(), this_machine_like(tmp_path), Accelerators("cuda", 2),
                    environ={})
    assert res.device_for("gpu", (1,), 0, isolate=True).env == {"CUDA_VISIBLE_DEVICES": "1"}


def test_pci_numa_nodes_from_sysfs(tmp_path: Path):
    for address, node in (("0000:3b:00.0", "0"), ("0000:af:00.0", "1"), ("0000:05:00.0", "-1")):
        folder = tmp_path / "bus/pci/devices" / address
        folder.mkdir(parents=True)
        (folder / "numa_node").write_text(node + "\n")
    assert pci_numa_nodes(["0000:AF:00.0", "0000:3b:00.0", "0000:05:00.0", "-"],
                          tmp_path) == (1, 0, None, None)


def test_gpu_workers_are_placed_on_their_devices_numa_node(tmp_path: Path):
    # Two sockets; cuda:0 hangs off node 1, cuda:1 off node 0.
    res = Resources(Settings(), two_socket(tmp_path), Accelerators("cuda", 2, nodes=(1, 0)))
    on_zero = res.policy_for({}, "gpu", (0,))
    assert on_zero.nodes == [1]
    assert {p.node for p in res.place("a", 2, on_zero)} == {1}
    assert res.policy_for({}, None, None).nodes == [0, 1]  # both devices: both nodes
    assert res.policy_for({}, "cpu", None).nodes is None  # a CPU model goes anywhere
    # The archive's own placement block wins.
    assert res.policy_for({"placement": {"nodes": [0]}}, "gpu", (0,)).nodes == [0]
    unknown = Resources(Settings(), two_socket(tmp_path / "u"), Accelerators("cuda", 2))
    assert unknown.policy_for({}, "gpu", (0,)).nodes is None

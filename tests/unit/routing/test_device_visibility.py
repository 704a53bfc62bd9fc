"""An isolated worker on a server that was itself given a subset of the accelerators
(CUDA_VISIBLE_DEVICES / ZE_AFFINITY_MASK inherited) is given the device's own name."""

from __future__ import annotations

from pathlib import Path

from serving.routing.resources import Accelerators, Resources
from serving.settings import Settings
from tests.unit.routing.test_topology import this_machine_like


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

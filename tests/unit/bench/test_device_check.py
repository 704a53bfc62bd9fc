"""The device check's verdict on its committed H200 run, and on that run with one thing broken.

The run itself needs a GPU (bench/device_check.py, results in bench/results/device/); here its
recorded result is fed back to `failures`, so the rules that decide a GPU run's pass or fail
are checked on real figures wherever the suite runs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.device_check import MEMORY_TOLERANCE_MIB, failures

RESULT = Path(__file__).resolve().parents[3] / "bench/results/device/device_check.json"


def recorded() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(RESULT.read_text())
    return result


def gpu_sample(result: dict[str, Any], name: str) -> dict[str, Any]:
    sample: dict[str, Any] = next(s for s in result["metrics"]["gpu_samples"] if s["name"] == name)
    return sample


def test_the_recorded_run_passes() -> None:
    result = recorded()
    assert failures(result["models"], result["metrics"], result["exit_code"]) == []
    assert result["failures"] == []


def drop_gpu_series(r: dict[str, Any]) -> None:
    r["metrics"]["gpu_samples"] = []


def other_device_id(r: dict[str, Any]) -> None:
    for s in r["metrics"]["gpu_samples"]:
        s["labels"]["DeviceId"] = "1"


def memory_zero(r: dict[str, Any]) -> None:
    gpu_sample(r, "GPUMemoryUsed")["value"] = 0.0


def memory_without_reserve(r: dict[str, Any]) -> None:
    # What the server would report if it read NVML's v2 `used` (the reserve left out).
    gpu_sample(r, "GPUMemoryUsed")["value"] -= r["metrics"]["nvidia_smi"][0]["memory_reserved_mib"]


def memory_past_tolerance(r: dict[str, Any]) -> None:
    gpu_sample(r, "GPUMemoryUsed")["value"] += 2 * MEMORY_TOLERANCE_MIB


def idle_under_load(r: dict[str, Any]) -> None:
    for s in r["metrics"]["under_load"]["gpu_samples"]:
        if s["name"] == "GPUUtilization":
            s["value"] = 0.0


def one_request_uncounted(r: dict[str, Any]) -> None:
    r["metrics"]["ts_inference_requests"]["resnet50-bf16"] -= 1


def model_missing_from_counters(r: dict[str, Any]) -> None:
    del r["metrics"]["ts_inference_requests"]["resnet50-gpu"]


def package_not_served(r: dict[str, Any]) -> None:
    # What describe shows when the worker compiled at start instead (the package refused).
    r["models"]["resnet50-pt2"]["optimization_applied"] = ["fold", "bf16", "compile"]
    r["models"]["resnet50-pt2"]["package_steps"] = []


def package_without_aot(r: dict[str, Any]) -> None:
    r["models"]["resnet50-pt2"]["package_steps"] = ["fold", "bf16"]


def package_answers_off(r: dict[str, Any]) -> None:
    r["models"]["resnet50-pt2"]["vs_cpu_fp32"]["top1_agreement"] = 31 / 32


@pytest.mark.parametrize(("breakage", "expected"), [
    (package_not_served, "resnet50-pt2: applied"),
    (package_without_aot, "resnet50-pt2: applied"),
    (package_answers_off, "resnet50-pt2: top-1 agreement"),
    (drop_gpu_series, "no series"),
    (other_device_id, "DeviceId"),
    (memory_zero, "GPUMemoryUsed on 0 is"),
    (memory_without_reserve, "reserved"),
    (memory_past_tolerance, "reserved"),
    (idle_under_load, "under load"),
    (one_request_uncounted, "resnet50-bf16: ts_inference_requests_total"),
    (model_missing_from_counters, "resnet50-gpu: ts_inference_requests_total None"),
])
def test_each_broken_figure_fails_the_check(breakage: Callable[[dict[str, Any]], None],
                                            expected: str) -> None:
    result = copy.deepcopy(recorded())
    breakage(result)
    problems = failures(result["models"], result["metrics"], result["exit_code"])
    assert any(expected in p for p in problems), problems


def test_memory_within_tolerance_passes() -> None:
    result = recorded()
    gpu_sample(result, "GPUMemoryUsed")["value"] += MEMORY_TOLERANCE_MIB / 2
    assert failures(result["models"], result["metrics"], result["exit_code"]) == []


def test_an_unknown_reserve_allows_for_it() -> None:
    """A driver whose nvidia-smi cannot report memory.reserved: the server's figure may sit
    up to a reserve's worth above memory.used, never below it."""
    result = recorded()
    del result["metrics"]["nvidia_smi"][0]["memory_reserved_mib"]
    assert failures(result["models"], result["metrics"], result["exit_code"]) == []
    gpu_sample(result, "GPUMemoryUsed")["value"] = (
        result["metrics"]["nvidia_smi"][0]["memory_used_mib"] - 2 * MEMORY_TOLERANCE_MIB)
    problems = failures(result["models"], result["metrics"], result["exit_code"])
    assert any("None reserved" in p for p in problems), problems

"""What the machine offers: the device to run on and the CPU instruction-set flags that matter."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

# The flags that change what Inductor's C++ code generator emits (ISA of the vector and GEMM
# micro-kernels); packages and caches built with one set are not interchangeable with another.
RELEVANT_CPU_FLAGS = frozenset(
    {
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "amx_fp16",
        # aarch64 equivalents, read from the "Features" line
        "asimd",
        "sve",
        "sve2",
        "bf16",
        "i8mm",
    }
)


@functools.cache
def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The relevant instruction-set flags of this CPU (empty where /proc/cpuinfo is missing)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    return parse_cpu_flags(text)


def parse_cpu_flags(cpuinfo_text: str) -> frozenset[str]:
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split()) & RELEVANT_CPU_FLAGS
    return frozenset()


def cpu_arch() -> str:
    return platform.machine() or "unknown"


def resolve_device(requested: str, explicit: torch.device | str | None = None) -> torch.device:
    """The device a pipeline runs on: the caller's choice, else the config's, else auto.

    `auto` takes the current accelerator (XPU, CUDA, ...) through `torch.accelerator`, so
    one code path serves every backend.
    """
    if explicit is not None:
        return torch.device(explicit)
    if requested == "auto":
        if torch.accelerator.is_available():
            accelerator = torch.accelerator.current_accelerator()
            if accelerator is not None:
                return torch.device(accelerator.type, torch.accelerator.current_device_index())
        return torch.device("cpu")
    if requested != "cpu" and not _backend_available(requested):
        raise RuntimeError(f"device {requested!r} requested but not available")
    return torch.device(requested)


def _backend_available(kind: str) -> bool:
    if not torch.accelerator.is_available():
        return False
    accelerator = torch.accelerator.current_accelerator()
    return accelerator is not None and accelerator.type == kind


def supports_low_precision(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether bf16/fp16 math is native here (on CPU without it, autocast only slows down)."""
    if device.type != "cpu":
        return True
    features = cpu_features()
    if dtype == torch.bfloat16:
        return bool(features & {"avx512_bf16", "amx_bf16", "bf16"})
    return bool(features & {"avx512_fp16", "amx_fp16"})


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so timings measure the work and not its launch."""
    if device.type != "cpu" and torch.accelerator.is_available():
        torch.accelerator.synchronize()

"""What the machine offers: the device to run on and the CPU instruction-set flags that matter."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from serving.cpuflags import RELEVANT_CPU_FLAGS

__all__ = ["RELEVANT_CPU_FLAGS"]

# Set once per process (worker start, precompile child) from the `cpu_features` setting.
_override: frozenset[str] | None = None


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The relevant instruction-set flags of this CPU (empty where /proc/cpuinfo is missing),
    or the set `override_cpu_features` injected."""
    if _override is not None:
        return _override
    return detected_cpu_features(cpuinfo)


@functools.cache
def detected_cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """What /proc/cpuinfo says, whatever was injected."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    return parse_cpu_flags(text)


def parse_feature_list(value: str | None) -> frozenset[str] | None:
    """`avx2,fma` (comma or space separated) as a feature set; None or blank: no override.

    Unknown names are kept out: only the flags in RELEVANT_CPU_FLAGS change a decision."""
    if value is None or not value.strip():
        return None
    names = {name.strip().lower() for name in value.replace(",", " ").split()}
    return frozenset(names) & RELEVANT_CPU_FLAGS


def override_cpu_features(features: frozenset[str] | None) -> None:
    """Make this process believe its CPU has exactly `features` (None: back to detection).

    A testing and operations knob: the candidate list of `auto`, the compile-cache key and
    the precompiled packages' sidecars follow it. It does not change which instructions
    torch's own kernels use (ATEN_CPU_CAPABILITY does that)."""
    global _override
    _override = features


def feature_source() -> str:
    return "injected" if _override is not None else "detected"


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


INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def has_int8_dot_product(device: torch.device) -> bool:
    """Whether u8s8 dot products are native here (VNNI or AMX-INT8): what makes static INT8
    convolutions pay off on CPU. Accelerators are assumed to have them."""
    return device.type != "cpu" or bool(cpu_features() & INT8_DOT_FLAGS)


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

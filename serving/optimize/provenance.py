"""What a precompiled package was built from: its weights' sha256 and the settings that shaped it.

An AOTInductor package built with freezing holds the weights as constants, so a package
next to changed weights would serve the old model; its stored reference outputs came from
the old weights too, so the accuracy guard cannot notice. The build records both facts in
the sidecar and a worker compares them with the model its handler loaded.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from serving.optimize.config import CompileConfig, OptimizationConfig


def weights_sha256(model: nn.Module) -> str:
    """sha256 over every parameter and buffer of `model` after the handler's `initialize`:
    names, dtypes, shapes and bytes, in name order. It identifies what the handler loaded,
    wherever that came from (serialized file, extra files, code); about 0.2 s per 100 MB.
    """
    digest = hashlib.sha256()
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.is_quantized:
        tensor = tensor.int_repr()
    flat = tensor.to("cpu").contiguous().reshape(-1)
    data: bytes = flat.view(torch.uint8).numpy().tobytes()
    return data


def try_weights_sha256(model: nn.Module) -> tuple[str | None, str]:
    """`weights_sha256`, or None and why (a tensor subclass or meta tensor without bytes)."""
    try:
        return weights_sha256(model), ""
    except Exception as exc:
        return None, f"the model's weights cannot be hashed ({type(exc).__name__}: {exc})"


def weights_mismatch(recorded: str | None, current: str | None) -> str | None:
    """Why a package recorded as built from `recorded` must not serve the model whose
    weights hash to `current` (None: they could not be hashed), or None when it may."""
    if current is None:
        return "the model's weights could not be hashed, so the package cannot be matched"
    if recorded is None:
        return ("the sidecar records no weights hash (a package from an older build): it "
                "cannot be shown to hold this model's weights")
    if recorded != current:
        return (f"built from other weights (sha256 {recorded[:12]}..., this model's "
                f"{current[:12]}...)")
    return None


def package_settings(config: OptimizationConfig) -> dict[str, Any]:
    """The settings that decide what a package computes (the batch bound is the sidecar's
    own `max_batch`)."""
    return {"dtype": config.dtype, "quantization": config.quantization.mode,
            "fold": config.fold, "channels_last": config.channels_last}


def asked_max_batch(compile: CompileConfig) -> int | None:
    """The batch bound the config states itself (largest bucket, or a dynamic batch's
    bound); None when it leaves the bound to the samples."""
    if compile.batch_sizes:
        return max(compile.batch_sizes)
    return compile.max_batch if compile.dynamic else None


def settings_override(
    built: dict[str, Any] | None, built_max_batch: int | None, config: OptimizationConfig
) -> dict[str, Any] | None:
    """What the config asks that the package was not built with: {"package": {...},
    "asked": {...}}, or None when they agree (or the sidecar records no settings)."""
    if not isinstance(built, dict):
        return None
    asked = package_settings(config)
    package = {key: built.get(key) for key in asked if built.get(key) != asked[key]}
    wanted = {key: asked[key] for key in package}
    bound = asked_max_batch(config.compile)
    if bound is not None and bound != built_max_batch:
        package["max_batch"], wanted["max_batch"] = built_max_batch, bound
    if not package:
        return None
    return {"package": package, "asked": wanted}

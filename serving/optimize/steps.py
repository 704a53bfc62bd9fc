"""The eager steps of the pipeline: eval, conv-bn folding, channels-last, bf16/fp16 autocast.

Each step takes the current `Variant` and returns a new one (or None when it does not apply),
never modifying the one it was given, so a refused step leaves the last good one intact.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Variant:
    """One configuration of the model: the eager module plus how its inputs must look."""

    module: nn.Module
    channels_last: bool = False
    quantized: str | None = None
    autocast: torch.dtype | None = None
    applied: tuple[str, ...] = ()
    # What to serve if this variant cannot be compiled (static INT8 is slow uncompiled).
    eager_fallback: Variant | None = None

    def then(self, step: str, module: nn.Module, **changes: Any) -> Variant:
        return replace(self, module=module, applied=(*self.applied, step), **changes)


class NotApplicable(Exception):
    """A step that has nothing to do on this model or device (recorded as skipped)."""


def unwrap(model: nn.Module) -> tuple[nn.Module, str | None]:
    """The plain module under a handler's own `torch.compile` (TorchServe's `pt2:` path)."""
    inner = getattr(model, "_orig_mod", None)
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) and isinstance(inner, nn.Module):
        return inner, "unwrapped the handler's torch.compile; the pipeline compiles itself"
    return model, None


def prepare_eval(model: nn.Module, device: torch.device) -> nn.Module:
    """Inference settings, in place: the handler's module is the pipeline's starting point."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model.to(device)


def has_modules(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    return any(isinstance(m, kinds) for m in model.modules())


def fold_conv_bn(variant: Variant) -> Variant:
    """Fold batch norms into the preceding convolutions (FX graph rewrite, on a copy)."""
    from torch.fx.experimental.optimization import fuse

    module = variant.module
    if not (has_modules(module, _CONVS) and has_modules(module, _NORMS)):
        raise NotApplicable("no convolution followed by batch norm")
    before = sum(isinstance(m, _NORMS) for m in module.modules())
    fused = fuse(module, inplace=False)
    after = sum(isinstance(m, _NORMS) for m in fused.modules())
    if after == before:
        raise NotApplicable("no batch norm directly after a convolution")
    return variant.then("fold", fused)


def to_channels_last(variant: Variant, device: torch.device, setting: bool | str) -> Variant:
    """NHWC weights and inputs: the layout oneDNN's CPU convolutions run fastest in.

    `auto` turns it on for CPU conv nets only; on GPUs the gain depends on dtype and kernels.
    """
    if setting is False:
        raise NotApplicable("disabled")
    if not has_modules(variant.module, (nn.Conv2d,)):
        raise NotApplicable("no 2-D convolutions")
    if setting == "auto" and device.type != "cpu":
        raise NotApplicable(f"auto: only on CPU (device is {device.type})")
    module = copy.deepcopy(variant.module).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return variant.then("channels_last", module, channels_last=True)


class Autocast(nn.Module):
    """Runs the wrapped module under autocast; a module, so export and compile see it too."""

    def __init__(self, inner: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.inner(*args, **kwargs)


def _autocast_for(inner: nn.Module) -> type[Autocast]:
    """Autocast, its forward showing the wrapped forward's parameters: torch.export (2.13)
    cannot match dynamic shapes to inputs that reach a forward through `**kwargs` (an
    AssertionError about a tree_name), so a bf16 text model, called with input_ids and
    attention_mask, could not be packaged."""
    try:
        signature = inspect.signature(inner.forward)
    except (TypeError, ValueError):
        return Autocast

    def forward(self: Autocast, *args: Any, **kwargs: Any) -> Any:
        return Autocast.forward(self, *args, **kwargs)

    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[this, *signature.parameters.values()])
    return type("Autocast", (Autocast,), {"forward": forward, "__doc__": Autocast.__doc__,
                                          "__module__": __name__})


def with_autocast(variant: Variant, device: torch.device, dtype_name: str) -> Variant:
    if dtype_name == "fp32":
        raise NotApplicable("dtype is fp32")
    dtype = LOW_PRECISION[dtype_name]
    module = _autocast_for(variant.module)(variant.module, device.type, dtype)
    return variant.then(dtype_name, module, autocast=dtype)

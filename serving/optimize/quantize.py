"""INT8 steps: static (PT2E with the Inductor quantizers), dynamic and weight-only (torchao)."""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from serving.optimize.batching import Sample, export_batched, prepare_inputs, varying_dims
from serving.optimize.steps import NotApplicable, Variant

_QUANTIZER_MODULES = {
    "cpu": "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer",
    "xpu": "torchao.quantization.pt2e.quantizer.xpu_inductor_quantizer",
}


@functools.cache
def load_quantizer_passes(device_type: str) -> None:
    """Import the Inductor quantizer module of this device once per process, before compiling.

    Importing the x86 one installs Inductor passes (a pre-grad pass, weight-packing patterns)
    that must be in place for every compile of a quantized graph; importing it again later,
    or only for some compiles, would make cached graphs and fresh ones disagree.
    """
    name = _QUANTIZER_MODULES.get(device_type)
    if name is not None:
        importlib.import_module(name)


def _quantizer(device: torch.device) -> Any:
    if device.type == "cpu":
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

        return x86.X86InductorQuantizer().set_global(
            x86.get_default_x86_inductor_quantization_config()
        )
    if device.type == "xpu":
        from torchao.quantization.pt2e.quantizer import xpu_inductor_quantizer as xpu

        return xpu.XPUInductorQuantizer().set_global(
            xpu.get_default_xpu_inductor_quantization_config()
        )
    raise NotApplicable(f"no PT2E Inductor quantizer for {device.type}")


def static_int8(
    variant: Variant,
    calibration: list[Sample],
    device: torch.device,
    max_batch: int | None,
) -> Variant:
    """Export, insert observers (X86/XPU Inductor quantizer), calibrate, convert.

    The result runs in eager as fake quantization; its speed comes when Inductor (freezing on)
    lowers the quantize/dequantize pairs to INT8 kernels.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise NotApplicable("no calibration inputs")
    quantizer = _quantizer(device)
    load_quantizer_passes(device.type)
    inputs = [prepare_inputs(s, device, variant.channels_last) for s in calibration]
    graph = export_batched(variant.module, inputs[0], max_batch, varying_dims(inputs)).module()
    _split_shared_module_calls(graph)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for args, kwargs in inputs:
            prepared(*args, **kwargs)
    converted = convert_pt2e(prepared)
    return variant.then("int8_static", converted, quantized="static", eager_fallback=variant)


def _split_shared_module_calls(graph: torch.fx.GraphModule) -> None:
    """One pattern partition per call of a module that is called more than once.

    ResNet blocks call one `nn.ReLU` three times. Export (non-strict) leaves the quantizer
    only `nn_module_stack` to find patterns, whose innermost entry names the module, not
    the call (the key says `relu@1`, the value `relu`): all calls land in one partition and
    the X86 quantizer fails ("Input partition has more than one output node"). The call
    index from the key goes into the name; the graph itself is unchanged.
    """
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (fqn, cls) = next(reversed(stack.items()))
        if "@" in key and "@" not in fqn:
            node.meta["nn_module_stack"] = {**stack, key: (f"{fqn}@{key.rsplit('@', 1)[1]}", cls)}


@contextmanager
def _matmul_precision_kept() -> Iterator[None]:
    # torchao <= 0.17 set the process-wide fp32 matmul precision to "high" as a side effect.
    before = torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def torchao_int8(variant: Variant, mode: str) -> Variant:
    """INT8 Linear layers through torchao `quantize_`, on a copy: dynamic or weight-only."""
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    if not any(isinstance(m, nn.Linear) for m in variant.module.modules()):
        raise NotApplicable("no Linear layers")
    config: Any
    if mode == "dynamic":
        config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    else:
        config = Int8WeightOnlyConfig(set_inductor_config=False)
    module = copy.deepcopy(variant.module)
    with _matmul_precision_kept():
        quantize_(module, config)
    return variant.then(f"int8_{mode}", module, quantized=mode)

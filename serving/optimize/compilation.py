"""The compile step: `torch.compile` with serving-minded options, and warm-up over every bucket."""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
from torch import nn

from serving.optimize.batching import (
    DynamicDims,
    Sample,
    batch_size,
    call_shape,
    resize_batch,
)
from serving.optimize.config import CompileConfig
from serving.optimize.runner import OptimizedModel

# torch.compile from several threads at once can crash; a worker compiles one graph at a time.
COMPILE_LOCK = threading.RLock()


def compile_options(config: CompileConfig, device: torch.device) -> dict[str, Any]:
    """Inductor options for `config` on `device`; CPU-only knobs stay behind the device check."""
    import torch._inductor

    options: dict[str, Any] = {}
    if config.mode not in ("off", "default"):
        options.update(torch._inductor.list_mode_options(config.mode))
    if device.type == "cpu":
        # CUDA graphs mean nothing on CPU; freezing folds weights (conv-bn included) into
        # constants and lets the CPU backend prepack them for oneDNN.
        options.pop("triton.cudagraphs", None)
        options["freezing"] = True
        if config.cpp_wrapper:
            options["cpp_wrapper"] = True
    options.update(config.options)
    return options


def compile_module(module: nn.Module, config: CompileConfig, static_shapes: bool) -> nn.Module:
    """A lazily compiled module: nothing is compiled until warm-up calls it.

    Inductor options are not passed here but patched around warm-up (`warm_up`): given to
    `torch.compile(options=...)`, freezing does not reach the INT8 weight-prepack passes and
    a PT2E graph fails to lower (onednn.qconv_prepack has no fake kernel).
    """
    kwargs: dict[str, Any] = {"fullgraph": config.fullgraph}
    if static_shapes:
        # Buckets: one graph per bucket, no automatic dynamic shapes after the second size.
        kwargs["dynamic"] = False
    compiled: nn.Module = torch.compile(module, backend=config.backend, **kwargs)  # type: ignore[assignment]
    return compiled


def warmup_inputs(
    samples: list[Sample],
    buckets: list[int],
    dynamic: bool,
    max_batch: int | None,
    dynamic_dims: DynamicDims | None = None,
) -> list[Sample]:
    """One input per graph the server will need: each distinct shape at each bucket size.

    For a dynamic batch, the widest batch first (dim 0 marked dynamic, from 2) and then a
    batch of one, which torch always specialises. Samples that differ only in
    `dynamic_dims` share their graphs; of those, the shortest and the longest run, so
    warm-up spans the sizes the graphs are known to serve.
    """
    groups: dict[tuple[Any, ...], list[tuple[list[int], Sample]]] = {}
    for sample in samples:
        shape = call_shape(sample, dynamic_dims)
        groups.setdefault(shape.signature, []).append((shape.sizes, sample))
    kept: list[Sample] = []
    for group in groups.values():
        shortest = min(group, key=lambda sized: sized[0])
        longest = max(group, key=lambda sized: sized[0])
        kept.extend([shortest[1], longest[1]] if shortest[0] != longest[0] else [shortest[1]])
    inputs: list[Sample] = []
    for sample in kept:
        n = batch_size(sample)
        if n is None:
            inputs.append(sample)
        elif dynamic:
            inputs.append(resize_batch(sample, n, max(2, max_batch or n)))
            inputs.append(resize_batch(sample, n, 1))
        else:
            inputs.extend(resize_batch(sample, n, b) for b in buckets)
    return inputs


def reserve_cache_entries(count: int) -> None:
    """Raise Dynamo's per-function recompile limit so no bucket silently falls back to eager.

    Every compiled instance of a model class shares its `forward`'s cache, so each pipeline
    adds its own graphs to the limit instead of setting it.
    """
    config = torch._dynamo.config
    config.recompile_limit = config.recompile_limit + count
    config.accumulated_recompile_limit = max(
        config.accumulated_recompile_limit, config.recompile_limit * 4
    )


def warm_up(
    runner: OptimizedModel, inputs: list[Sample], options: dict[str, Any]
) -> tuple[float, float]:
    """Compile every graph (first pass, Inductor `options` patched in), then prove none
    recompiles (second pass, protected). Returns (compile seconds, warm-up seconds).
    """
    import torch._inductor.config as inductor_config

    with COMPILE_LOCK, inductor_config.patch(options):
        reserve_cache_entries(len(inputs) + 1)
        runner.warming = True
        start = time.perf_counter()
        for args, kwargs in inputs:
            runner(*args, **kwargs)
        compiled = time.perf_counter() - start
        runner.protect()
        start = time.perf_counter()
        for args, kwargs in inputs:
            runner(*args, **kwargs)
        return compiled, time.perf_counter() - start

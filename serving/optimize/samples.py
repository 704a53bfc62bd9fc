"""Example inputs for warm-up, calibration and the accuracy guard: captured, loaded or generated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.optimize.batching import Sample, detach_sample
from serving.optimize.config import (
    OptimizationConfig,
    OptimizationConfigError,
    resolve_in_model_dir,
)


def capture_inputs(model: nn.Module, run: Callable[[], object], limit: int) -> list[Sample]:
    """What `model.forward` receives while `run` drives the unmodified handler.

    This is how samples come from the handler's own preprocessing: the integrator feeds
    warm-up requests through `handle`, and the hook records up to `limit` calls. Only calls
    of `model` itself are recorded (not its submodules'); `run`'s exceptions propagate.
    """
    captured: list[Sample] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if len(captured) < limit:
            # Copies made outside inference mode are ordinary tensors, like the inputs a
            # handler builds in preprocess; compiled graphs guard on that distinction.
            with torch.inference_mode(False), torch.no_grad():
                captured.append(detach_sample((tuple(args), dict(kwargs))))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return captured


def as_sample(item: Any) -> Sample:
    """One call from a saved item: a tensor, a tuple of arguments, a dict of keyword
    arguments, or an `(args, kwargs)` pair."""
    if isinstance(item, torch.Tensor):
        return (item,), {}
    if isinstance(item, dict):
        return (), dict(item)
    if isinstance(item, (tuple, list)):
        if len(item) == 2 and isinstance(item[0], (tuple, list)) and isinstance(item[1], dict):
            return tuple(item[0]), dict(item[1])
        return tuple(item), {}
    raise ValueError(f"cannot use a {type(item).__name__} as model inputs")


def load_samples(path: Path, limit: int | None = None) -> list[Sample]:
    """A `torch.save`d list of inputs, loaded without unpickling arbitrary objects."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    items = data if isinstance(data, list) else [data]
    samples = [as_sample(item) for item in items]
    return samples[:limit] if limit is not None else samples


def random_samples(
    shapes: list[list[int]], dtypes: str | list[str], int_range: tuple[int, int], count: int
) -> list[Sample]:
    """Seeded random inputs of the given shapes: one positional tensor per shape."""
    names = [dtypes] * len(shapes) if isinstance(dtypes, str) else dtypes
    if len(names) != len(shapes):
        raise OptimizationConfigError("optimization.warmup: dtype list must match shapes")
    generator = torch.Generator().manual_seed(0)
    samples: list[Sample] = []
    for _ in range(count):
        args = []
        for shape, name in zip(shapes, names, strict=True):
            dtype = getattr(torch, name, None)
            if not isinstance(dtype, torch.dtype):
                raise OptimizationConfigError(f"optimization.warmup.dtype: unknown dtype {name!r}")
            if dtype.is_floating_point:
                args.append(torch.randn(shape, generator=generator).to(dtype))
            else:
                low, high = int_range
                args.append(torch.randint(low, high, shape, generator=generator, dtype=dtype))
        samples.append((tuple(args), {}))
    return samples


def names_example_inputs(config: OptimizationConfig) -> bool:
    """Whether the config gives the pipeline inputs to warm up and check against: warm-up
    requests sent through the handler, or the samples `samples_from_config` reads."""
    warmup = config.warmup
    return bool(warmup.requests or warmup.file or warmup.shapes
                or config.quantization.calibration_file)


def samples_from_config(config: OptimizationConfig, model_dir: Path | str) -> list[Sample] | None:
    """Warm-up samples named by the config: warmup.file, else warmup.shapes, else the
    calibration file; None when the config names none (capture them from the handler)."""
    model_dir = Path(model_dir)
    warmup = config.warmup
    if warmup.file:
        return load_samples(resolve_in_model_dir(model_dir, warmup.file))
    if warmup.shapes:
        return random_samples(warmup.shapes, warmup.dtype, warmup.int_range, warmup.count)
    return calibration_from_config(config, model_dir)


def calibration_from_config(
    config: OptimizationConfig, model_dir: Path | str | None
) -> list[Sample] | None:
    quantization = config.quantization
    if not quantization.calibration_file or model_dir is None:
        return None
    path = resolve_in_model_dir(Path(model_dir), quantization.calibration_file)
    return load_samples(path, limit=quantization.calibration_batches)

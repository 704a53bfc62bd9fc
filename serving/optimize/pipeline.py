"""The optimisation pipeline: each step guarded for accuracy, a refused step rolled back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch import nn

from serving.optimize import candidates
from serving.optimize.accuracy import AccuracyGuard
from serving.optimize.batching import (
    DynamicDims,
    Sample,
    batch_size,
    structure_key,
    varying_dims,
)
from serving.optimize.cache import configure_compile_env
from serving.optimize.compilation import compile_module, compile_options, warm_up, warmup_inputs
from serving.optimize.config import OptimizationConfig
from serving.optimize.hardware import resolve_device
from serving.optimize.package import recorded_weights, serve_precompiled
from serving.optimize.provenance import try_weights_sha256
from serving.optimize.quantize import load_quantizer_passes, static_int8, torchao_int8
from serving.optimize.report import PipelineReport, StepRecord, describe
from serving.optimize.runner import OptimizedModel
from serving.optimize.samples import calibration_from_config
from serving.optimize.steps import (
    NotApplicable,
    Variant,
    fold_conv_bn,
    prepare_eval,
    to_channels_last,
    unwrap,
    with_autocast,
)

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every step of one build shares."""

    base: nn.Module
    config: OptimizationConfig
    device: torch.device
    guard: AccuracyGuard
    samples: list[Sample]
    calibration: list[Sample]
    # sha256 of the handler's weights, when a precompiled package must be matched to them.
    weights: str | None = None


def build(
    model: nn.Module,
    config: OptimizationConfig,
    samples: list[Sample] | None,
    device: torch.device | str | None = None,
    *,
    model_dir: Path | str | None = None,
    reference: list[list[torch.Tensor]] | None = None,
) -> tuple[nn.Module, PipelineReport]:
    """The optimised model for the handler to keep as `self.model`, and what was done.

    `reference`: the fp32 outputs of the first samples, when known (a precompiled package
    ships them), instead of running the model for them.
    Never raises for an optimisation: whatever fails is recorded and the last configuration
    that passed the accuracy guard is returned (at worst the model as it came in).
    """
    report = PipelineReport()
    start = time.perf_counter()
    result: nn.Module = model
    try:
        ctx = make_context(model, config, samples or [], device, model_dir, report, reference)
        if ctx is not None:
            result = _run(ctx, model_dir, report)
    except Exception as exc:  # an optimisation must never take the worker down
        report.error = describe(exc)
    report.total_seconds = time.perf_counter() - start
    return result, report


def make_context(
    model: nn.Module,
    config: OptimizationConfig,
    samples: list[Sample],
    device: torch.device | str | None,
    model_dir: Path | str | None,
    report: PipelineReport,
    reference: list[list[torch.Tensor]] | None = None,
) -> Context | None:
    dev = resolve_device(config.device, device)
    report.device = str(dev)
    if isinstance(model, torch.jit.ScriptModule):
        report.notes.append("TorchScript model: only eager nn.Modules can be optimised")
        return None
    base, note = unwrap(model)
    if not samples:
        base.eval()
        report.notes.append("no example inputs: the accuracy guard cannot run, nothing applied")
        return None
    if note:
        report.notes.append(note)
    prepare_eval(base, dev)
    if config.compile.threads is not None:
        configure_compile_env(compile_threads=config.compile.threads)
    weights = None
    if config.precompiled:
        weights, why = try_weights_sha256(base)
        if why:
            report.notes.append(why)
        if reference and not _same_weights(model_dir, config.precompiled, weights):
            # The package's stored outputs came from other weights: they would approve the
            # stale package and refuse every correct step.
            report.notes.append("the package's stored fp32 outputs are not from this model's "
                                "weights: the reference is computed from the model")
            reference = None
    if reference:
        guard = AccuracyGuard(config.accuracy, samples[: len(reference)], reference)
    else:
        guard = AccuracyGuard.from_model(config.accuracy, OptimizedModel(base, device=dev),
                                         samples)
    report.metric, report.samples = guard.metric, len(guard.samples)
    calibration = (
        calibration_from_config(config, model_dir)
        or samples[: config.quantization.calibration_batches]
    )
    return Context(base, config, dev, guard, samples, calibration, weights)


def _same_weights(model_dir: Path | str | None, package: str, weights: str | None) -> bool:
    if model_dir is None or weights is None:
        return False
    return recorded_weights(Path(model_dir), package) == weights


def load_passes_for(config: OptimizationConfig, device: torch.device) -> None:
    """The quantizer's Inductor passes, before anything this process compiles (a second
    or so of import: a worker that serves a precompiled package never pays it)."""
    static = config.quantization.mode == "static" or config.auto
    if device.type in ("cpu", "xpu") and (config.compile.enabled or static):
        load_quantizer_passes(device.type)


def _run(ctx: Context, model_dir: Path | str | None, report: PipelineReport) -> nn.Module:
    if ctx.config.precompiled and model_dir is not None:
        loaded = serve_precompiled(
            Path(model_dir), ctx.config, ctx.device, ctx.guard, ctx.base, report, ctx.weights
        )
        if loaded is not None:
            return loaded
    load_passes_for(ctx.config, ctx.device)
    if ctx.config.auto:
        return candidates.choose(ctx.config, ctx.base, ctx.device, ctx.guard, report,
                                 lambda cfg, sub: pipeline(with_config(ctx, cfg), sub))
    return pipeline(ctx, report)


def with_config(ctx: Context, config: OptimizationConfig) -> Context:
    return Context(ctx.base, config, ctx.device, ctx.guard, ctx.samples, ctx.calibration,
                   ctx.weights)


def pipeline(ctx: Context, report: PipelineReport) -> nn.Module:
    """The configured steps in order, then the compile step on whatever survived."""
    variant = eager_steps(ctx, report)
    return compile_step(ctx, variant, report)


def eager_steps(ctx: Context, report: PipelineReport) -> Variant:
    cfg, dev = ctx.config, ctx.device
    mode = cfg.quantization.mode
    steps: list[tuple[str, Callable[[Variant], Variant]]] = [
        ("fold", lambda v: fold_conv_bn(v) if cfg.fold else _skip("disabled")),
        ("channels_last", lambda v: to_channels_last(v, dev, cfg.channels_last)),
    ]
    if mode == "static":
        steps.append(("int8_static", lambda v: _static(ctx, v)))
    elif mode in ("dynamic", "weight_only"):
        steps.append((f"int8_{mode}", lambda v: torchao_int8(v, mode)))
    if cfg.dtype != "fp32":
        steps.append((cfg.dtype, lambda v: with_autocast(v, dev, cfg.dtype)))
    variant = Variant(ctx.base)
    for name, step in steps:
        variant = guarded_step(ctx, name, step, variant, report)
    return variant


def _skip(reason: str) -> Variant:
    raise NotApplicable(reason)


def _static(ctx: Context, variant: Variant) -> Variant:
    if not ctx.config.compile.enabled:
        raise NotApplicable("static INT8 only pays off compiled (compile.mode is off)")
    return static_int8(variant, ctx.calibration, ctx.device, max_batch(ctx))


def max_batch(ctx: Context) -> int | None:
    cfg = ctx.config.compile
    if cfg.batch_sizes:
        return max(cfg.batch_sizes)
    if cfg.dynamic:
        return cfg.max_batch
    sizes = [batch_size(s) or 1 for s in ctx.samples]
    return max(sizes) if sizes else None


def guarded_step(
    ctx: Context,
    name: str,
    step: Callable[[Variant], Variant],
    variant: Variant,
    report: PipelineReport,
) -> Variant:
    """Apply `step` to `variant`; keep the result only if the accuracy guard passes it."""
    record = report.record(StepRecord(name, "applied"))
    start = time.perf_counter()
    try:
        candidate = step(variant)
        verdict = ctx.guard.check(OptimizedModel.eager(candidate, ctx.device, ctx.base))
    except NotApplicable as exc:
        record.status, record.reason = "skipped", str(exc)
        return variant
    except Exception as exc:
        record.status, record.reason = "failed", describe(exc)
        return variant
    finally:
        record.seconds = time.perf_counter() - start
    record.accuracy = verdict.metrics
    if not verdict.passed:
        record.status = "refused"
        record.reason = f"{verdict.reason}; kept {'+'.join(variant.applied) or 'the original'}"
        return variant
    return candidate


def compile_step(ctx: Context, variant: Variant, report: PipelineReport) -> nn.Module:
    cfg = ctx.config.compile
    if not cfg.enabled:
        report.record(StepRecord("compile", "skipped", "compile.mode is off"))
        return OptimizedModel.eager(variant, ctx.device, ctx.base)
    record = report.record(StepRecord("compile", "applied"))
    buckets = cfg.batch_sizes or ([] if cfg.dynamic else _sample_buckets(ctx.samples))
    dims = varying_dims(ctx.samples)
    inputs = warmup_inputs(ctx.samples, buckets, cfg.dynamic, cfg.max_batch, dims)
    start = time.perf_counter()
    shapes = f"batch sizes {buckets}" if buckets else "a dynamic batch"
    log.info("compiling %s (%s) for %s...", "+".join(variant.applied) or "fp32", cfg.mode,
             shapes)
    try:
        compiled = compile_module(variant.module, cfg, static_shapes=not cfg.dynamic)
        runner = OptimizedModel(
            compiled,
            device=ctx.device,
            original=ctx.base,
            channels_last=variant.channels_last,
            buckets=buckets,
            max_batch=cfg.max_batch,
            upcast=variant.autocast is not None,
        )
        runner.dynamic_batch = cfg.dynamic
        runner.dynamic_dims = dims
        options = compile_options(cfg, ctx.device) if cfg.backend == "inductor" else {}
        report.compile_seconds, report.warmup_seconds = warm_up(runner, inputs, options)
        log.info("compiled and warmed up in %.1f s (compile %.1f s, warm-up %.1f s)",
                 time.perf_counter() - start, report.compile_seconds, report.warmup_seconds)
        verdict = ctx.guard.check(runner, guarded_batches(buckets, cfg.dynamic))
    except Exception as exc:
        record.status, record.reason = "failed", describe(exc)
        return _uncompiled(ctx, variant, report)
    finally:
        record.seconds = time.perf_counter() - start
    record.accuracy = verdict.metrics
    record.per_batch = {str(size): metrics for size, metrics in verdict.per_batch.items()}
    if not verdict.passed:
        record.status, record.reason = "refused", verdict.reason
        return _uncompiled(ctx, variant, report)
    report.buckets, report.dynamic_batch = list(buckets), cfg.dynamic
    report.dynamic_dims = _describe_dims(ctx.samples, dims)
    return runner


def guarded_batches(buckets: list[int], dynamic: bool) -> list[int]:
    """The batch sizes the guard runs besides the samples' own: every bucket (one graph
    each), or for a dynamic batch its two graphs, one row and two or more rows."""
    return [1, 2] if dynamic else list(buckets)


def _describe_dims(samples: list[Sample], dims: DynamicDims) -> list[str]:
    """Which input dims were compiled dynamic, for describe: "[1]['input_ids'] dim 1"."""
    out: list[str] = []
    for key, per_leaf in dims.items():
        for sample in samples:
            leaves, spec = pytree.tree_flatten(sample)
            if structure_key(leaves, spec) == key:
                flat = pytree.tree_flatten_with_path(sample)[0]
                paths = [pytree.keystr(path) for path, _ in flat]
                out.extend(f"{paths[i]} dim {d}"
                           for i, ds in sorted(per_leaf.items()) for d in ds)
                break
    return out


def _sample_buckets(samples: list[Sample]) -> list[int]:
    return sorted({n for n in (batch_size(s) for s in samples) if n is not None})


def _uncompiled(ctx: Context, variant: Variant, report: PipelineReport) -> nn.Module:
    """Eager fallback; a static INT8 graph is only fake-quantized in eager, so drop it."""
    fallback = variant.eager_fallback
    if fallback is not None:
        for name in set(variant.applied) - set(fallback.applied):
            record = report.step(name)
            if record is not None:
                record.status = "failed"
                record.reason = "dropped: static INT8 only pays off compiled, and compile failed"
        variant = fallback
    return OptimizedModel.eager(variant, ctx.device, ctx.base)

"""Ahead-of-time builds: the guarded eager steps, exported and AOT-compiled into a .pt2 package."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.optimize.batching import DynamicDims, Sample, varying_dims
from serving.optimize.candidates import candidate_config, choose, why_chosen
from serving.optimize.config import OptimizationConfig
from serving.optimize.package import sidecar_path, write_package, write_reference
from serving.optimize.pipeline import (
    Context,
    eager_steps,
    load_passes_for,
    make_context,
    max_batch,
    pipeline,
    with_config,
)
from serving.optimize.provenance import try_weights_sha256
from serving.optimize.report import CandidateRecord, PipelineReport, describe

log = logging.getLogger(__name__)


class PrecompileError(RuntimeError):
    """The package could not be built; the message says which step and why."""


def precompile(
    model: nn.Module,
    config: OptimizationConfig,
    samples: list[Sample],
    out_path: Path | str,
    device: torch.device | str | None = None,
    *,
    model_dir: Path | str | None = None,
) -> Path:
    """Write `out_path` (.pt2) and its sidecar (`<out_path>.json`) for this torch, CPU and
    thread count, with dim 0 symbolic up to the largest bucket (or `compile.max_batch`),
    and the example inputs with their fp32 outputs (`<out_path>.reference.pt`) that let a
    worker guard the package without running the fp32 model.

    The eager steps (fold, channels-last, INT8, autocast) run under the accuracy guard first,
    exactly as `build` runs them; refused steps are left out of the package.
    """
    out = precompile_with_report(model, config, samples, out_path, device, model_dir=model_dir)
    return out[0]


def precompile_with_report(
    model: nn.Module,
    config: OptimizationConfig,
    samples: list[Sample],
    out_path: Path | str,
    device: torch.device | str | None = None,
    *,
    model_dir: Path | str | None = None,
) -> tuple[Path, PipelineReport]:
    """`precompile`, also returning the report of the steps that went into the package."""
    report = PipelineReport()
    if not samples:
        raise PrecompileError("precompiling needs example inputs (warm-up or captured)")
    ctx = make_context(model, config, samples, device, model_dir, report)
    if ctx is None:
        raise PrecompileError("; ".join(report.notes) or "model cannot be optimised")
    # Hashed before any step runs: the weights as the handler loaded them, as a worker sees
    # them when it decides whether this package may serve its model.
    weights, why = try_weights_sha256(ctx.base)
    if why:
        report.notes.append(f"{why}: no worker will load this package")
    load_passes_for(config, ctx.device)
    dims = varying_dims(samples)  # sequence lengths: one package serves every length
    if config.auto:
        path = _package_auto_choice(ctx, report, Path(out_path), weights, dims)
    else:
        variant = eager_steps(ctx, report)
        try:
            path = write_package(variant, samples[0], Path(out_path), ctx.device,
                                 max_batch(ctx), dims, weights=weights, config=config)
        except Exception as exc:
            raise PrecompileError(f"export/AOT compile failed: {exc}") from exc
    write_reference(path, samples, ctx.guard.reference)
    report.precompiled = str(sidecar_path(path))
    return path, report


def _package_auto_choice(ctx: Context, report: PipelineReport, out_path: Path,
                         weights: str | None, dims: DynamicDims) -> Path:
    """`auto: true`: the candidates run (compiled, timed, guarded) as a worker would run
    them, and the package holds the fastest that exports (not every compiled variant does:
    torch.export refuses some graphs that torch.compile takes); the search goes into the
    sidecar."""
    search = PipelineReport(device=report.device, metric=report.metric, samples=report.samples)
    choose(ctx.config, ctx.base, ctx.device, ctx.guard, search,
           lambda cfg, sub: pipeline(with_config(ctx, cfg), sub))
    report.candidates, report.cpu_features = search.candidates, search.cpu_features
    report.cpu_features_source = search.cpu_features_source
    ranked = sorted((c for c in search.candidates if c.passed and c.name != "eager"
                     and c.latency_ms is not None), key=lambda c: c.latency_ms or 0.0)
    failures: list[str] = []
    for candidate in ranked:
        planned = candidate_config(ctx.config, candidate.name, ctx.base, ctx.device)
        if isinstance(planned, str):
            continue
        chosen_ctx, attempt = with_config(ctx, planned[0]), PipelineReport()
        try:
            variant = eager_steps(chosen_ctx, attempt)
            path = write_package(variant, ctx.samples[0], out_path, ctx.device,
                                 max_batch(chosen_ctx), dims, weights=weights,
                                 config=chosen_ctx.config,
                                 auto=_auto_record(search, candidate, failures))
        except Exception as exc:
            failures.append(f"{candidate.name} cannot be packaged ({describe(exc)})")
            log.warning("auto: %s; trying the next fastest", failures[-1])
            continue
        report.steps.extend(attempt.steps)
        report.chosen, report.why = candidate.name, _why(search, candidate, failures)
        return path
    raise PrecompileError("auto: no compiled candidate could be packaged ("
                          + ("; ".join(failures) or search.why or "none passed") + ")")


def _why(search: PipelineReport, packaged: CandidateRecord, failures: list[str]) -> str:
    if packaged.name == search.chosen:
        return search.why or ""
    return f"{why_chosen(search, packaged)}; faster but not packaged: {'; '.join(failures)}"


def _auto_record(search: PipelineReport, packaged: CandidateRecord, failures: list[str]
                 ) -> dict[str, Any]:
    return {"chosen": packaged.name, "why": _why(search, packaged, failures),
            "cpu_features": search.cpu_features,
            "cpu_features_source": search.cpu_features_source,
            "candidates": [asdict(c) for c in search.candidates]}

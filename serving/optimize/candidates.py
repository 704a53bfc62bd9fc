"""`auto: true`: candidate pipelines tried on the warm-up inputs; the fastest that passes wins."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from serving.optimize.accuracy import AccuracyGuard
from serving.optimize.batching import Sample
from serving.optimize.config import Candidate, OptimizationConfig
from serving.optimize.hardware import supports_low_precision, synchronize
from serving.optimize.report import CandidateRecord, PipelineReport, describe
from serving.optimize.runner import OptimizedModel
from serving.optimize.steps import has_modules

BuildOne = Callable[[OptimizationConfig, PipelineReport], nn.Module]


def default_candidates(device: torch.device) -> list[Candidate]:
    names: list[Candidate] = ["eager", "compile"]
    if supports_low_precision(device, torch.bfloat16):
        names.append("bf16")
    names.append("int8")
    return names


def candidate_config(
    config: OptimizationConfig, name: Candidate, model: nn.Module, device: torch.device
) -> tuple[OptimizationConfig, set[str]] | str:
    """The config one candidate runs with and the steps it must keep to count, or why not."""
    mode = config.compile.mode if config.compile.enabled else "default"
    update: dict[str, Any] = {"auto": False, "dtype": "fp32"}
    quantization = config.quantization.model_copy(update={"mode": "none"})
    required = {"compile"}
    if name == "eager":
        mode, required = "off", set()
    elif name == "bf16":
        update["dtype"] = "bf16"
        required.add("bf16")
    elif name == "int8":
        if device.type in ("cpu", "xpu") and has_modules(model, (nn.Conv2d,)):
            kind = "static"
        elif has_modules(model, (nn.Linear,)):
            kind = "dynamic"
        else:
            return "no convolutions or Linear layers to quantize"
        quantization = quantization.model_copy(update={"mode": kind})
        required.add(f"int8_{kind}")
    update["quantization"] = quantization
    update["compile"] = config.compile.model_copy(update={"mode": mode})
    return config.model_copy(update=update), required


def measure_latency(
    model: Callable[..., Any], samples: list[Sample], device: torch.device, repeats: int = 5
) -> float:
    """Median milliseconds per call over the samples, after one untimed pass."""
    times = []
    for i in range(repeats + 1):
        for args, kwargs in samples:
            synchronize(device)
            start = time.perf_counter()
            model(*args, **kwargs)
            synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def choose(
    config: OptimizationConfig,
    model: nn.Module,
    device: torch.device,
    guard: AccuracyGuard,
    report: PipelineReport,
    build_one: BuildOne,
) -> nn.Module:
    best: tuple[nn.Module, PipelineReport, CandidateRecord] | None = None
    for name in config.candidates or default_candidates(device):
        record = CandidateRecord(name, passed=False)
        report.candidates.append(record)
        planned = candidate_config(config, name, model, device)
        if isinstance(planned, str):
            record.reason = planned
            continue
        candidate_config_, required = planned
        sub = PipelineReport(device=report.device, metric=report.metric, samples=report.samples)
        try:
            runner = build_one(candidate_config_, sub)
            record.applied = sub.applied
            missing = sorted(required - set(sub.applied))
            if missing:
                record.reason = _why_not(sub, missing)
                continue
            record.latency_ms = measure_latency(runner, guard.samples, device)
        except Exception as exc:  # one broken candidate must not end the search
            record.reason = describe(exc)
            continue
        record.passed = True
        if best is None or record.latency_ms < (best[2].latency_ms or float("inf")):
            best = (runner, sub, record)
    if best is None:
        report.notes.append("auto: no candidate passed; serving the model uncompiled")
        return OptimizedModel(model, device=device)
    runner, sub, record = best
    _adopt(report, sub)
    report.chosen = record.name
    return runner


def _why_not(sub: PipelineReport, missing: list[str]) -> str:
    reasons = []
    for name in missing:
        step = sub.step(name)
        status = f"{step.status}: {step.reason}" if step else "not reached"
        reasons.append(f"{name} {status}")
    return "; ".join(reasons)


def _adopt(report: PipelineReport, chosen: PipelineReport) -> None:
    """The chosen candidate's steps and timings become the report's own."""
    report.steps = [*report.steps, *chosen.steps]
    report.buckets = chosen.buckets
    report.dynamic_batch = chosen.dynamic_batch
    report.dynamic_dims = chosen.dynamic_dims
    report.compile_seconds = chosen.compile_seconds
    report.warmup_seconds = chosen.warmup_seconds
    report.notes.extend(chosen.notes)

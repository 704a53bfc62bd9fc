"""`auto: true`: candidate pipelines tried on the warm-up inputs; the fastest that passes wins."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from serving.optimize.accuracy import AccuracyGuard
from serving.optimize.batching import Sample
from serving.optimize.config import Candidate, OptimizationConfig
from serving.optimize.hardware import (
    cpu_features,
    feature_source,
    has_int8_dot_product,
    supports_low_precision,
    synchronize,
)
from serving.optimize.report import CandidateRecord, PipelineReport, describe, format_accuracy
from serving.optimize.runner import OptimizedModel
from serving.optimize.steps import has_modules

log = logging.getLogger(__name__)

BuildOne = Callable[[OptimizationConfig, PipelineReport], nn.Module]


def default_candidates(device: torch.device, model: nn.Module | None = None
                       ) -> list[tuple[Candidate, str | None]]:
    """The pipelines `auto` tries on this device and CPU, each with None, or the reason it
    is skipped here (shown in describe).

    compile is fp32 with freezing, channels-last for conv nets (`channels_last: auto`);
    int8_dynamic quantizes only the Linear layers, which helps without VNNI too.
    """
    convs = model is not None and has_modules(model, (nn.Conv2d,))
    linears = model is None or has_modules(model, (nn.Linear,))
    names: list[tuple[Candidate, str | None]] = [("eager", None), ("compile", None)]
    if supports_low_precision(device, torch.bfloat16):
        names.append(("bf16", None))
    else:
        names.append(("bf16", "no native bf16 (avx512_bf16, amx_bf16): autocast would only "
                              "add conversions"))
    # Static INT8 of a conv net is tried without VNNI/AMX-INT8 too: it served only 1.25x
    # fp32 eager on an AVX2-only CPU (issue #15), but whether compiled fp32 or dynamic INT8
    # beat that there is for the measurement to say.
    names.append(("int8", None))
    int8_static = convs and device.type in ("cpu", "xpu")
    if not int8_static:
        return names  # int8 is already dynamic INT8 of the Linear layers
    if not linears:
        names.append(("int8_dynamic", "no Linear layers"))
    elif has_int8_dot_product(device):
        names.append(("int8_dynamic", "static INT8 quantizes the Linear layers too here"))
    else:
        names.append(("int8_dynamic", None))
    return names


def candidate_config(
    config: OptimizationConfig, name: str, model: nn.Module, device: torch.device
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
    elif name in ("int8", "int8_dynamic"):
        if name == "int8" and device.type in ("cpu", "xpu") and has_modules(model, (nn.Conv2d,)):
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


def measure_interleaved(
    models: list[Callable[..., Any]], samples: list[Sample], device: torch.device,
    rounds: int = 5,
) -> list[float | BaseException]:
    """Median milliseconds per call of each model, timed in alternating rounds (the order
    flipped each round) after one untimed pass each, so that load from other processes
    that comes and goes weighs on every candidate alike. A model that raises gets its
    exception instead of a time."""
    times: list[list[float]] = [[] for _ in models]
    failed: dict[int, BaseException] = {}
    order = list(range(len(models)))
    for round_ in range(rounds + 1):
        for index in order if round_ % 2 else reversed(order):
            if index in failed:
                continue
            try:
                for args, kwargs in samples:
                    synchronize(device)
                    start = time.perf_counter()
                    models[index](*args, **kwargs)
                    synchronize(device)
                    if round_:
                        times[index].append(time.perf_counter() - start)
            except Exception as exc:  # a candidate that breaks when timed does not count
                failed[index] = exc
    return [failed.get(i) or statistics.median(t) * 1000.0 for i, t in enumerate(times)]


def planned_candidates(config: OptimizationConfig, model: nn.Module, device: torch.device
                       ) -> list[tuple[Candidate, str | None]]:
    """The config's own list (each one tried), or the defaults for this device and CPU."""
    if config.candidates:
        return [(name, None) for name in config.candidates]
    return default_candidates(device, model)


def choose(
    config: OptimizationConfig,
    model: nn.Module,
    device: torch.device,
    guard: AccuracyGuard,
    report: PipelineReport,
    build_one: BuildOne,
) -> nn.Module:
    planned = planned_candidates(config, model, device)
    report.cpu_features = sorted(cpu_features())
    report.cpu_features_source = feature_source()
    features = ", ".join(report.cpu_features) or "none"
    log.info("auto: %d candidates on %s (CPU features %s: %s)", len(planned), device,
             feature_source(), features)
    built: list[tuple[nn.Module, PipelineReport, CandidateRecord]] = []
    for i, (name, skip) in enumerate(planned, 1):
        record = CandidateRecord(name, passed=False)
        report.candidates.append(record)
        plan = skip or candidate_config(config, name, model, device)
        if isinstance(plan, str):
            record.reason = f"skipped: {plan}"
            log.info("auto [%d/%d] %s: %s", i, len(planned), name, record.reason)
            continue
        log.info("auto [%d/%d] %s: building...", i, len(planned), name)
        one = _try(record, plan, guard, report, build_one)
        log.info("auto [%d/%d] %s", i, len(planned), record.summary())
        if one is not None:
            built.append((*one, record))
    best = _fastest(built, guard, device)
    report.why = why_chosen(report, best[2] if best else None)
    log.info("auto: %s", report.why)
    if best is None:
        report.notes.append("auto: no candidate passed; serving the model uncompiled")
        return OptimizedModel(model, device=device)
    runner, sub, record = best
    _adopt(report, sub)
    report.chosen = record.name
    return runner


def _fastest(built: list[tuple[nn.Module, PipelineReport, CandidateRecord]],
             guard: AccuracyGuard, device: torch.device,
             ) -> tuple[nn.Module, PipelineReport, CandidateRecord] | None:
    """Time every candidate that passed the guard, side by side; the fastest, or None."""
    if not built:
        return None
    log.info("auto: timing %d candidates in alternating rounds...", len(built))
    measured = measure_interleaved([runner for runner, _, _ in built], guard.samples, device)
    timed = []
    for (runner, sub, record), result in zip(built, measured, strict=True):
        if isinstance(result, BaseException):
            record.passed, record.reason = False, f"failed when timed: {describe(result)}"
        else:
            record.latency_ms = result
            timed.append((runner, sub, record))
        log.info("auto: %s", record.summary())
    return min(timed, key=lambda b: b[2].latency_ms or 0.0, default=None)


def _try(record: CandidateRecord, plan: tuple[OptimizationConfig, set[str]],
         guard: AccuracyGuard, report: PipelineReport,
         build_one: BuildOne) -> tuple[nn.Module, PipelineReport] | None:
    """Build and guard one candidate; None (and the record says why) when it does not count."""
    candidate_config_, required = plan
    sub = PipelineReport(device=report.device, metric=report.metric, samples=report.samples)
    start = time.perf_counter()
    try:
        runner = build_one(candidate_config_, sub)
        record.applied = sub.applied
        record.accuracy = _accuracy_of(sub)
        missing = sorted(required - set(sub.applied))
        if missing:
            record.reason = _why_not(sub, missing)
            return None
    except Exception as exc:  # one broken candidate must not end the search
        record.reason = describe(exc)
        return None
    finally:
        record.seconds = time.perf_counter() - start
    record.passed = True
    return runner, sub


def _accuracy_of(sub: PipelineReport) -> dict[str, float]:
    """The guard's verdict on what the candidate serves: the compile step's check, else the
    last applied eager step's."""
    for step in reversed(sub.steps):
        if step.accuracy and step.status in ("applied", "refused"):
            return dict(step.accuracy)
    return {}


def why_chosen(report: PipelineReport, best: CandidateRecord | None) -> str:
    """One line: what won, by how much over eager, with what accuracy, and what lost why."""
    if best is None:
        return "no candidate passed the accuracy guard; serving the model uncompiled"
    eager = next((c for c in report.candidates if c.name == "eager" and c.passed), None)
    text = f"chose {best.name} ({best.latency_ms:.2f} ms"
    if eager is not None and eager.latency_ms and best.latency_ms:
        text += f", {eager.latency_ms / best.latency_ms:.2f}x over eager"
    accuracy = format_accuracy(best.accuracy)
    text += f", {accuracy})" if accuracy else ")"
    others = [f"{c.name} {c.latency_ms:.2f} ms" for c in report.candidates
              if c.passed and c is not best and c.latency_ms is not None]
    lost = [f"{c.name} {_lost(c)}" for c in report.candidates if not c.passed]
    if others:
        text += "; slower: " + ", ".join(others)
    if lost:
        text += "; not counted: " + ", ".join(lost)
    return text


def _lost(candidate: CandidateRecord) -> str:
    if candidate.reason.startswith("skipped"):
        return "skipped"
    return "refused (accuracy)" if " refused: " in candidate.reason else "failed"


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

"""Applying the optimisation pipeline to a loaded handler's model, inside the worker."""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.handlers.service import HandlerService, WorkItem
from serving.optimize.batching import Sample
from serving.optimize.config import (
    OptimizationConfig,
    OptimizationConfigError,
    resolve_in_model_dir,
)
from serving.optimize.package import read_reference
from serving.optimize.pipeline import build
from serving.optimize.samples import capture_inputs, samples_from_config

log = logging.getLogger(__name__)


def optimize_handler(service: HandlerService, config: OptimizationConfig, model_dir: Path,
                     device: str | None, batch_size: int) -> dict[str, Any]:
    """Replace the handler's `self.model` with the optimised module; returns the report.

    Works for unmodified TorchServe handlers (any object with an `nn.Module` in `.model`,
    which BaseHandler and the built-in handlers have). Never raises for an optimisation.
    """
    instance = service.handler.instance
    model = getattr(instance, "model", None)
    if instance is None or not isinstance(model, nn.Module):
        note = "the handler has no nn.Module in self.model; nothing was optimised"
        log.warning("%s", note)
        return {"applied": [], "notes": [note]}
    notes: list[str] = []
    samples, reference = None, None
    stored = _package_reference(config, model_dir)
    if stored is not None:
        samples, reference = stored
        notes.append(f"{len(samples)} example inputs and the fp32 reference outputs come from "
                     "the package's build: warm-up requests are not run again")
    if samples is None:
        samples = samples_from_config(config, model_dir)
    if samples is None and config.warmup.requests:
        try:
            samples = capture_warmup_samples(service, model, config, model_dir, batch_size)
        except Exception as e:  # the model is still served, unoptimised, and describe says why
            notes.append(f"warm-up requests could not be captured: {e}")
    optimized, report = build(model, config, samples, device, model_dir=model_dir,
                              reference=reference)
    report.notes[:0] = notes
    setattr(instance, "model", optimized)  # noqa: B010 - any handler object
    summary = report.to_dict()
    log.info("optimisation done in %.1f s: %s", report.total_seconds, report.ready_line())
    for note in report.notes:
        log.info("optimisation: %s", note)
    if report.error:
        log.warning("optimisation failed, serving the model as loaded: %s", report.error)
    return summary


def _package_reference(config: OptimizationConfig, model_dir: Path
                       ) -> tuple[list[Sample], list[list[torch.Tensor]]] | None:
    if not config.precompiled:
        return None
    try:
        package = resolve_in_model_dir(model_dir, config.precompiled)
    except OptimizationConfigError:
        return None  # the pipeline says why when it looks for the package
    return read_reference(package)


def capture_warmup_samples(service: HandlerService, model: nn.Module, config: OptimizationConfig,
             model_dir: Path, batch_size: int) -> list[Sample]:
    """Run the warm-up requests through the handler and keep what its model received."""
    bodies = [resolve_in_model_dir(model_dir, name) for name in config.warmup.requests or []]
    items = [WorkItem(f"warmup-{i}", {}, [("body", _content_type(path), path.read_bytes())])
             for i, path in enumerate(bodies)]
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]

    def run() -> None:
        for batch in batches:
            result = service.predict(batch)
            if not isinstance(result, list):
                raise RuntimeError(f"a warm-up request failed in the handler: {result.message}")

    limit = max(config.accuracy.samples, config.quantization.calibration_batches)
    return capture_inputs(model, run, limit)


def _content_type(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"

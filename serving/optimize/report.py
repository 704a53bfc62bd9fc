"""What the pipeline did to a model and why: shown by the describe API and the worker's log."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

StepStatus = Literal["applied", "refused", "skipped", "failed"]


@dataclass
class StepRecord:
    """One step: `refused` means it ran but broke the accuracy budget; `failed` that it raised."""

    name: str
    status: StepStatus
    reason: str = ""
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    # The metrics of every batch size the guard also ran (each compiled bucket), by size.
    per_batch: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class CandidateRecord:
    """One pipeline tried by `auto`, with its measured latency on the warm-up inputs."""

    name: str
    passed: bool
    latency_ms: float | None = None
    reason: str = ""
    applied: list[str] = field(default_factory=list)
    # The accuracy guard's metrics on what the candidate serves, and its build+measure time.
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """One progress line: latency and accuracy verdict, or why it does not count."""
        if not self.passed:
            return f"{self.name}: {self.reason or 'did not pass'} ({self.seconds:.1f} s)"
        accuracy = format_accuracy(self.accuracy) or (
            "the fp32 reference itself" if not self.applied else "accuracy not measured")
        timed = f"{self.latency_ms:.2f} ms, " if self.latency_ms is not None else ""
        return (f"{self.name}: {timed}{accuracy}, passed "
                f"({'+'.join(self.applied) or 'as loaded'}; built in {self.seconds:.1f} s)")


def format_accuracy(metrics: dict[str, float]) -> str:
    """The guard's headline figure: top-1 agreement for logits, else cosine, else error."""
    if "top1_agreement" in metrics:
        return f"top-1 agreement {metrics['top1_agreement']:.0%}"
    if "min_cosine" in metrics:
        return f"cosine {metrics['min_cosine']:.4f}"
    if "max_abs_error" in metrics:
        return f"max abs error {metrics['max_abs_error']:.3g}"
    return ""


@dataclass
class PipelineReport:
    device: str = "cpu"
    metric: str | None = None
    samples: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    buckets: list[int] = field(default_factory=list)
    dynamic_batch: bool = False
    dynamic_dims: list[str] = field(default_factory=list)
    compile_seconds: float = 0.0
    warmup_seconds: float = 0.0
    total_seconds: float = 0.0
    candidates: list[CandidateRecord] = field(default_factory=list)
    chosen: str | None = None
    # What auto knew and concluded: the CPU features it acted on (detected or injected by the
    # cpu_features setting) and one line on why the chosen candidate won.
    cpu_features: list[str] = field(default_factory=list)
    cpu_features_source: str = ""
    why: str | None = None
    precompiled: str | None = None
    # The steps inside the precompiled package served (its sidecar's list), when one is.
    package_steps: list[str] = field(default_factory=list)
    # Settings asked for (registration or model-config.yaml) that the package was not
    # built with: {"package": {...}, "asked": {...}, "served": ..., "reason": ...}.
    package_override: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def record(self, step: StepRecord) -> StepRecord:
        self.steps.append(step)
        return step

    def step(self, name: str) -> StepRecord | None:
        """The last record of the step called `name`."""
        for record in reversed(self.steps):
            if record.name == name:
                return record
        return None

    @property
    def applied(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "applied"]

    def pipeline_name(self) -> str:
        """What is served, e.g. `fold+channels_last+int8_static+compile`."""
        if self.package_steps:
            return "+".join(self.package_steps) + " (precompiled package)"
        return "+".join(self.applied) or "as loaded (eager fp32)"

    def ready_line(self) -> str:
        """What the console says when the model is ready: pipeline, and auto's verdict."""
        line = self.pipeline_name()
        if self.chosen and self.why:
            line += f" (auto on {self.cpu_features_source} CPU features "
            line += f"{','.join(self.cpu_features) or 'none'}: {self.why})"
        if self.error:
            line += f" (optimisation failed: {self.error})"
        return line

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for candidate in data["candidates"]:
            candidate["seconds"] = round(candidate["seconds"], 3)
            candidate["accuracy"] = json_safe(candidate["accuracy"])
        data["applied"] = self.applied
        data["ready"] = self.ready_line()
        for key in ("compile_seconds", "warmup_seconds", "total_seconds"):
            data[key] = round(data[key], 3)
        for step in data["steps"]:
            step["seconds"] = round(step["seconds"], 3)
            step["accuracy"] = json_safe(step["accuracy"])
            step["per_batch"] = {k: json_safe(v) for k, v in step["per_batch"].items()}
        return data


def json_safe(metrics: dict[str, float]) -> dict[str, float | str]:
    """Metrics for describe, whose JSON has no NaN or Infinity: those become "nan", "inf"."""
    return {k: v if math.isfinite(v) else str(v) for k, v in metrics.items()}


def describe(exc: BaseException, limit: int = 400) -> str:
    """An exception as one line for the report: its type and (the start of) its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = " | ".join(lines)
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__

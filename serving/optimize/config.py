"""The `optimization:` block of model-config.yaml, and TorchServe's `pt2:` key mapped onto it."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.errors import BadRequest
from serving.optimize.inductor_options import check_inductor_options

Device = Literal["auto", "cpu", "xpu", "cuda"]
CompileMode = Literal[
    "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
]
# int8: static PT2E for conv nets, dynamic for Linear-only models; int8_dynamic: dynamic INT8
# of the Linear layers only, for any model that has them (AVX2 CPUs, conv nets with heads).
Candidate = Literal["eager", "compile", "bf16", "int8", "int8_dynamic"]
# Backends that ship with torch and run nothing from outside it; a name from a plugin
# (openvino, tensorrt, ...) would load and run third-party code chosen by the caller.
Backend = Literal["inductor", "eager", "aot_eager", "cudagraphs"]
# Bounds on what a registration call can make a worker compile or allocate at start-up.
MAX_BATCH = 4096
MAX_BUCKETS = 16
MAX_WARMUP_ELEMENTS = 64 * 1024 * 1024  # 256 MiB of float32 per warm-up input


class _Strict(BaseModel):
    # A typo in a model config must be a registration error, not a silently ignored knob.
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantizationConfig(_Strict):
    mode: Literal["none", "static", "dynamic", "weight_only"] = "none"
    calibration_file: str | None = None
    calibration_batches: int = Field(default=32, ge=1, le=10_000)


class CompileConfig(_Strict):
    mode: CompileMode = "off"
    backend: Backend = "inductor"
    batch_sizes: list[int] | None = None
    dynamic: bool = False
    max_batch: int | None = Field(default=None, ge=1, le=MAX_BATCH)
    cpp_wrapper: bool = False
    fullgraph: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    threads: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("batch_sizes")
    @classmethod
    def _buckets(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value or any(b < 1 for b in value):
            raise ValueError("batch_sizes must be a non-empty list of positive integers")
        if len(set(value)) > MAX_BUCKETS or max(value) > MAX_BATCH:
            raise ValueError(f"batch_sizes: at most {MAX_BUCKETS} buckets of at most "
                             f"{MAX_BATCH} rows (each bucket is compiled and checked)")
        return sorted(set(value))

    @field_validator("options")
    @classmethod
    def _allowed_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_inductor_options(value)

    @model_validator(mode="after")
    def _one_batching_scheme(self) -> CompileConfig:
        if self.dynamic and self.batch_sizes is not None:
            raise ValueError("choose batch_sizes (padded buckets) or dynamic, not both")
        if self.max_batch is not None and not self.dynamic:
            raise ValueError("max_batch bounds a dynamic batch (buckets: the largest is the max)")
        if self.dynamic and self.max_batch == 1:
            raise ValueError("a dynamic batch needs max_batch >= 2 (one row: batch_sizes [1])")
        if self.options and self.backend != "inductor":
            raise ValueError(f"options are Inductor settings; backend {self.backend} takes none")
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


class WarmupConfig(_Strict):
    # Request bodies (files in the archive) sent through the unmodified handler; the model's
    # inputs are captured on the way, so samples come from the handler's own preprocessing.
    requests: list[str] | None = None
    file: str | None = None
    shapes: list[list[int]] | None = None
    dtype: str | list[str] = "float32"
    int_range: tuple[int, int] = (0, 2)
    count: int = Field(default=4, ge=1, le=1024)

    @field_validator("shapes")
    @classmethod
    def _bounded_shapes(cls, value: list[list[int]] | None) -> list[list[int]] | None:
        # Random warm-up tensors are allocated in the worker: a registration call must not be
        # able to ask for more memory than a real input could take.
        if value is None:
            return None
        if len(value) > 64:
            raise ValueError("shapes: at most 64 warm-up inputs")
        for shape in value:
            if not shape or len(shape) > 8 or any(d < 1 for d in shape):
                raise ValueError(f"shapes: {shape} is not 1 to 8 positive sizes")
            if math.prod(shape) > MAX_WARMUP_ELEMENTS:
                raise ValueError(f"shapes: {shape} has more than {MAX_WARMUP_ELEMENTS:,} "
                                 "elements")
        return value


class AccuracyConfig(_Strict):
    metric: Literal["auto", "top1", "cosine", "max_abs"] = "auto"
    min_top1_agreement: float = Field(default=0.99, ge=0.0, le=1.0)
    min_cosine: float = Field(default=0.99, ge=-1.0, le=1.0)
    max_abs_error: float | None = Field(default=None, ge=0.0)
    max_rel_error: float | None = Field(default=None, ge=0.0)
    samples: int = Field(default=16, ge=1, le=4096)

    @model_validator(mode="after")
    def _budget_given(self) -> AccuracyConfig:
        if self.metric == "max_abs" and self.max_abs_error is None and self.max_rel_error is None:
            raise ValueError("metric max_abs needs max_abs_error or max_rel_error")
        return self


class OptimizationConfig(_Strict):
    device: Device = "auto"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool | Literal["auto"] = "auto"
    fold: bool = True
    quantization: QuantizationConfig = QuantizationConfig()
    compile: CompileConfig = CompileConfig()
    precompiled: str | None = None
    warmup: WarmupConfig = WarmupConfig()
    accuracy: AccuracyConfig = AccuracyConfig()
    auto: bool = False
    candidates: list[Candidate] | None = None


class OptimizationConfigError(BadRequest):
    """The archive's optimisation settings do not validate; registration answers 400."""


def format_validation_error(exc: ValidationError, prefix: str = "optimization") -> str:
    """One readable line for every problem pydantic found, with the allowed keys for typos."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join([prefix, *loc])
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            parts.append(f"{where}: unknown key (allowed: {', '.join(allowed)})")
        else:
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _allowed_keys(path: list[str]) -> list[str]:
    model: type[BaseModel] = OptimizationConfig
    for key in path:
        field = model.model_fields.get(key)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return sorted(model.model_fields)


def from_model_yaml(
    yaml_dict: dict[str, Any] | None, overrides: dict[str, Any] | None = None
) -> OptimizationConfig | None:
    """The archive's optimisation config, or None when it asks for none.

    `pt2:` (TorchServe) fills in the compile step unless `optimization.compile` is given;
    `overrides` (server settings, CLI) are merged over the block key by key.
    """
    yaml_dict = yaml_dict or {}
    block = yaml_dict.get("optimization")
    if block is not None and not isinstance(block, dict):
        raise OptimizationConfigError("optimization: must be a mapping")
    data: dict[str, Any] = copy.deepcopy(block) if block else {}
    compile_from_pt2 = _compile_from_pt2(yaml_dict.get("pt2"))
    if compile_from_pt2 is not None and "compile" not in data:
        data["compile"] = compile_from_pt2
    if overrides:
        data = _merge(data, overrides)
    if block is None and compile_from_pt2 is None and not overrides:
        return None
    try:
        return OptimizationConfig.model_validate(data)
    except ValidationError as exc:
        raise OptimizationConfigError(format_validation_error(exc)) from exc


_PT2_KEYS = {"backend", "mode", "dynamic", "fullgraph", "options"}


def _compile_from_pt2(pt2: Any) -> dict[str, Any] | None:
    """TorchServe's `pt2:` forms: a backend name, `{compile: {enable, ...}}`, or bare kwargs."""
    if pt2 is None:
        return None
    if isinstance(pt2, str):
        return {"mode": "default", "backend": pt2}
    if not isinstance(pt2, dict):
        raise OptimizationConfigError("pt2: must be a backend name or a mapping")
    if "export" in pt2 and "compile" not in pt2:
        # AOT export is handled by the handler loading its own .so; nothing to compile here.
        return None
    options = pt2.get("compile", pt2)
    if not isinstance(options, dict):
        raise OptimizationConfigError("pt2.compile: must be a mapping")
    if "compile" in pt2 and not options.get("enable", False):
        return None
    unknown = set(options) - _PT2_KEYS - {"enable"}
    if unknown:
        raise OptimizationConfigError(
            f"pt2: unsupported torch.compile option(s) {', '.join(sorted(unknown))} "
            f"(supported: {', '.join(sorted(_PT2_KEYS))})"
        )
    mapped: dict[str, Any] = {"mode": options.get("mode") or "default"}
    for key in ("backend", "dynamic", "fullgraph", "options"):
        if options.get(key) is not None:
            mapped[key] = options[key]
    return mapped


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_in_model_dir(model_dir: Path, relative: str) -> Path:
    """A path named in the archive's config; it must stay inside the model directory."""
    root = model_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise OptimizationConfigError(f"optimization: {relative!r} points outside the model dir")
    if not path.is_file():
        raise OptimizationConfigError(f"optimization: {relative!r} not found in the archive")
    return path


def check_named_files(config: OptimizationConfig, model_dir: Path) -> None:
    """Every input file the config names is in the archive: a registration error now, not
    a worker that optimises nothing because its warm-up inputs are missing.

    `precompiled` is not checked: a missing or foreign package falls back to compiling.
    """
    named = [*(config.warmup.requests or []), config.warmup.file,
             config.quantization.calibration_file]
    for relative in named:
        if relative:
            resolve_in_model_dir(model_dir, relative)

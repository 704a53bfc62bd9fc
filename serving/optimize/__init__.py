"""Optimisation pipeline applied to a handler's model before the worker reports ready."""

from serving.optimize.cache import cache_dir, configure_compile_env
from serving.optimize.config import (
    OptimizationConfig,
    OptimizationConfigError,
    format_validation_error,
    from_model_yaml,
)
from serving.optimize.hardware import cpu_features, resolve_device
from serving.optimize.package import load_precompiled
from serving.optimize.pipeline import build
from serving.optimize.precompile import PrecompileError, precompile, precompile_with_report
from serving.optimize.report import PipelineReport
from serving.optimize.runner import OptimizedModel, UnwarmedShape
from serving.optimize.samples import capture_inputs, samples_from_config

__all__ = [
    "OptimizationConfig",
    "OptimizationConfigError",
    "OptimizedModel",
    "PipelineReport",
    "PrecompileError",
    "UnwarmedShape",
    "build",
    "cache_dir",
    "capture_inputs",
    "configure_compile_env",
    "cpu_features",
    "format_validation_error",
    "from_model_yaml",
    "load_precompiled",
    "precompile",
    "precompile_with_report",
    "resolve_device",
    "samples_from_config",
]

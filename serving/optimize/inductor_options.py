"""The Inductor options a model config may set (`compile.options`): an allowlist, values checked.

`compile.options` reaches `torch._inductor.config` in the worker, and it comes from the
archive's model-config.yaml, TorchServe's `pt2:` block or the registration call. Inductor's
config also names the C++ compiler, include and cache paths, debug and trace output, and
Python callables run during compilation, so only tuning switches that change how fast the
generated code runs (never what runs it, or where anything is written) are accepted. The
gateway validates registrations without importing torch; a unit test checks every name
against the installed torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Switches of the fusion, padding, autotuning and wrapper passes.
_BOOL_OPTIONS = (
    "aggressive_fusion",
    "batch_fusion",
    "benchmark_fusion",
    "comprehensive_padding",
    "conv_1x1_as_mm",
    "coordinate_descent_tuning",
    "cpp.dynamic_threads",
    "cpp.weight_prepack",
    "cpp_wrapper",
    "epilogue_fusion",
    "freezing",
    "group_fusion",
    "layout_optimization",
    "max_autotune",
    "max_autotune_gemm",
    "max_autotune_pointwise",
    "permute_fusion",
    "shape_padding",
    "split_reductions",
    "triton.cudagraph_trees",
    "triton.cudagraphs",
)
# Kernel families autotuning may choose from; CUTLASS and CK are left out: they build with
# toolchains found through configurable paths.
GEMM_BACKENDS = ("ATEN", "TRITON", "CPP")
MAX_FUSION_SIZE = (1, 256)


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _fusion_size(value: Any) -> str | None:
    low, high = MAX_FUSION_SIZE
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return None
    return f"must be an integer from {low} to {high}"


def _gemm_backends(value: Any) -> str | None:
    names = value.split(",") if isinstance(value, str) else []
    if names and all(name.strip().upper() in GEMM_BACKENDS for name in names):
        return None
    return f"must be a comma-separated list of {', '.join(GEMM_BACKENDS)}"


ALLOWED: dict[str, Callable[[Any], str | None]] = {
    **{name: _boolean for name in _BOOL_OPTIONS},
    "max_autotune_gemm_backends": _gemm_backends,
    "max_fusion_size": _fusion_size,
}


# A hostile config may hold thousands of keys or megabytes of text: the error stays one line.
_LISTED = 10


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_inductor_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` unchanged when every key is allowed and every value has the right type;
    otherwise a ValueError naming each refused option (and the allowed ones) or bad value."""
    refused = sorted(str(key) for key in options if key not in ALLOWED)
    if refused:
        names = ", ".join(_short(key) for key in refused[:_LISTED])
        if len(refused) > _LISTED:
            names += f" and {len(refused) - _LISTED} more"
        raise ValueError(
            f"Inductor option(s) {names} not allowed: compiler, path, command, cache, debug "
            f"and callable settings are never accepted (allowed: {', '.join(sorted(ALLOWED))})"
        )
    problems = []
    for key, value in options.items():
        why = ALLOWED[key](value)
        if why is not None:
            problems.append(f"{key} {why} (got {_short(value)})")
    if problems:
        raise ValueError("; ".join(problems))
    return options

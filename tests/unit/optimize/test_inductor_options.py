"""compile.options: only allowlisted Inductor settings with values of the right type; backend
and mode limited to known values; every route in (optimization block, pt2, registration)."""

from __future__ import annotations

from typing import Any

import pytest
import torch._inductor.config as inductor_config

from serving.optimize.config import OptimizationConfigError, from_model_yaml
from serving.optimize.inductor_options import ALLOWED, GEMM_BACKENDS


def _options(options: dict[str, Any], **compile: Any) -> dict[str, Any]:
    return {"optimization": {"compile": {"mode": "default", "options": options, **compile}}}


def _refusal(yaml: dict[str, Any], overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(OptimizationConfigError) as caught:
        from_model_yaml(yaml, overrides)
    assert caught.value.code == 400 and "\n" not in caught.value.message
    return caught.value.message


def test_every_allowed_option_exists_in_this_torch_with_a_matching_default() -> None:
    defaults = inductor_config.get_config_copy()
    for name, check in ALLOWED.items():
        assert name in defaults, f"{name} is not an Inductor option in this torch"
        default = defaults[name]
        # The allowlist's check accepts the value Inductor itself starts from.
        assert check(default) is None, (name, default)


def test_allowed_options_pass_unchanged() -> None:
    options = {"freezing": True, "max_autotune": False, "epilogue_fusion": True,
               "coordinate_descent_tuning": True, "shape_padding": False,
               "triton.cudagraphs": False, "cpp_wrapper": True, "max_fusion_size": 32,
               "max_autotune_gemm_backends": "ATEN,CPP"}
    config = from_model_yaml(_options(options))
    assert config is not None and config.compile.options == options


@pytest.mark.parametrize("name", ["cpp.cxx", "debug", "trace.enabled", "no_such_option",
                                  "cpp.extra_flags", "post_grad_custom_post_pass"])
def test_a_refused_option_is_a_400_naming_it_and_the_allowed_ones(name: str) -> None:
    message = _refusal(_options({name: "x", "freezing": True}))
    assert f"optimization.compile.options: Inductor option(s) {name!r} not allowed" in message
    assert "allowed: aggressive_fusion" in message and "freezing" in message
    assert "Value error" not in message


def test_refused_through_pt2_and_through_the_registration_override() -> None:
    pt2 = {"pt2": {"compile": {"enable": True, "options": {"cpp.cxx": "/tmp/cc"}}}}
    assert "'cpp.cxx' not allowed" in _refusal(pt2)
    override = {"compile": {"options": {"debug": True}}}
    assert "'debug' not allowed" in _refusal(_options({"freezing": True}), override)


@pytest.mark.parametrize(("options", "expected"), [
    ({"freezing": "yes"}, "freezing must be true or false (got 'yes')"),
    ({"max_autotune": 1}, "max_autotune must be true or false"),
    ({"max_fusion_size": True}, "max_fusion_size must be an integer from 1 to 256"),
    ({"max_fusion_size": 10_000}, "max_fusion_size must be an integer from 1 to 256"),
    ({"max_autotune_gemm_backends": "ATEN,CUTLASS"},
     f"must be a comma-separated list of {', '.join(GEMM_BACKENDS)}"),
])
def test_values_are_type_checked(options: dict[str, Any], expected: str) -> None:
    assert expected in _refusal(_options(options))


def test_a_huge_hostile_option_set_stays_a_short_message() -> None:
    options = {f"k{i}" + "x" * 1000: i for i in range(500)}
    message = _refusal(_options(options))
    assert "and 490 more" in message and len(message) < 3000


def test_backend_and_mode_are_limited_to_known_values() -> None:
    message = _refusal({"pt2": "openvino"})
    assert "optimization.compile.backend" in message and "'inductor'" in message
    assert "optimization.compile.mode" in _refusal(_options({}, mode="fastest"))
    for backend in ("inductor", "eager", "aot_eager", "cudagraphs"):
        config = from_model_yaml({"pt2": backend})
        assert config is not None and config.compile.backend == backend
    # Options are Inductor settings: with another backend they would be silently ignored.
    assert "backend eager takes none" in _refusal(_options({"freezing": True}, backend="eager"))

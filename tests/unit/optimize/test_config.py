"""The optimization block: strict validation, readable errors, TorchServe's pt2 key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.errors import BadRequest
from serving.optimize.config import (
    OptimizationConfig,
    OptimizationConfigError,
    format_validation_error,
    from_model_yaml,
)


def test_no_block_means_no_pipeline() -> None:
    assert from_model_yaml({"minWorkers": 1, "batchSize": 4}) is None
    assert from_model_yaml(None) is None


def test_full_block_validates() -> None:
    config = from_model_yaml(
        {
            "optimization": {
                "device": "cpu",
                "dtype": "bf16",
                "channels_last": True,
                "quantization": {"mode": "static", "calibration_file": "calib.pt"},
                "compile": {"mode": "max-autotune", "batch_sizes": [8, 1, 4, 4]},
                "accuracy": {"metric": "top1", "min_top1_agreement": 0.98},
            }
        }
    )
    assert config is not None
    assert config.dtype == "bf16"
    assert config.quantization.mode == "static"
    assert config.compile.batch_sizes == [1, 4, 8]
    assert config.accuracy.min_top1_agreement == 0.98


def test_unknown_key_is_a_400_naming_the_key_and_the_allowed_ones() -> None:
    with pytest.raises(OptimizationConfigError) as caught:
        from_model_yaml({"optimization": {"compile": {"mde": "default"}}})
    err = caught.value
    assert isinstance(err, BadRequest) and err.code == 400
    assert "optimization.compile.mde: unknown key" in err.message
    assert "batch_sizes" in err.message and "mode" in err.message
    assert "\n" not in err.message


def test_several_errors_become_one_line() -> None:
    with pytest.raises(ValidationError) as caught:
        OptimizationConfig.model_validate({"dtype": "int4", "fold": "maybe", "typo": 1})
    line = format_validation_error(caught.value)
    assert line.count(";") == 2
    assert "optimization.dtype" in line and "optimization.typo: unknown key" in line


@pytest.mark.parametrize(
    "block",
    [
        {"compile": {"batch_sizes": [1, 2], "dynamic": True}},
        {"compile": {"batch_sizes": []}},
        {"compile": {"batch_sizes": [1, 2], "max_batch": 4}},
        {"compile": {"dynamic": True, "max_batch": 1}},
        {"accuracy": {"metric": "max_abs"}},
        {"quantization": {"mode": "int4"}},
    ],
)
def test_inconsistent_settings_are_rejected(block: dict[str, object]) -> None:
    with pytest.raises(OptimizationConfigError):
        from_model_yaml({"optimization": block})


def test_pt2_string_is_a_compile_backend() -> None:
    config = from_model_yaml({"pt2": "inductor"})
    assert config is not None
    assert config.compile.mode == "default" and config.compile.backend == "inductor"


def test_pt2_compile_block_maps_onto_the_compile_step() -> None:
    yaml = {"pt2": {"compile": {"enable": True, "backend": "inductor", "mode": "max-autotune"}}}
    config = from_model_yaml(yaml)
    assert config is not None
    assert config.compile.mode == "max-autotune"


def test_pt2_compile_disabled_means_no_pipeline() -> None:
    assert from_model_yaml({"pt2": {"compile": {"enable": False}}}) is None


def test_pt2_deprecated_kwargs_form() -> None:
    config = from_model_yaml({"pt2": {"backend": "inductor", "mode": "reduce-overhead"}})
    assert config is not None and config.compile.mode == "reduce-overhead"


def test_pt2_unsupported_option_is_named() -> None:
    with pytest.raises(OptimizationConfigError, match="disable"):
        from_model_yaml({"pt2": {"compile": {"enable": True, "disable": True}}})


def test_optimization_compile_wins_over_pt2() -> None:
    config = from_model_yaml(
        {"pt2": "inductor", "optimization": {"dtype": "bf16", "compile": {"mode": "off"}}}
    )
    assert config is not None and not config.compile.enabled and config.dtype == "bf16"


def test_pt2_fills_compile_next_to_other_optimization_keys() -> None:
    config = from_model_yaml({"pt2": "inductor", "optimization": {"dtype": "bf16"}})
    assert config is not None and config.compile.enabled and config.dtype == "bf16"


def test_overrides_merge_key_by_key() -> None:
    config = from_model_yaml(
        {"optimization": {"compile": {"mode": "default", "batch_sizes": [1, 8]}}},
        overrides={"device": "cpu", "compile": {"threads": 1}},
    )
    assert config is not None
    assert config.device == "cpu"
    assert config.compile.threads == 1 and config.compile.batch_sizes == [1, 8]


def test_overrides_are_validated_too() -> None:
    with pytest.raises(OptimizationConfigError, match=r"optimization\.devise"):
        from_model_yaml({}, overrides={"devise": "cpu"})


@pytest.mark.parametrize(("block", "named"), [
    ({"compile": {"mode": "default", "batch_sizes": [1, 100_000]}}, "batch_sizes"),
    ({"compile": {"mode": "default", "batch_sizes": list(range(1, 40))}}, "batch_sizes"),
    ({"compile": {"mode": "default", "dynamic": True, "max_batch": 10**9}}, "max_batch"),
    ({"compile": {"mode": "default", "threads": 100_000}}, "threads"),
    ({"warmup": {"shapes": [[100_000, 100_000]]}}, "shapes"),
    ({"warmup": {"shapes": [[3, 224, 224]] * 65}}, "shapes"),
    ({"warmup": {"shapes": [[1, 0]]}}, "shapes"),
    ({"warmup": {"count": 10**6}}, "count"),
    ({"accuracy": {"samples": 10**6}}, "samples"),
    ({"quantization": {"mode": "dynamic", "calibration_batches": 10**6}}, "calibration_batches"),
])
def test_sizes_a_registration_can_ask_a_worker_for_are_bounded(
        block: dict[str, object], named: str) -> None:
    # The registration call may override the block: it must not make a worker compile
    # thousands of graphs or allocate terabytes of warm-up data.
    with pytest.raises(OptimizationConfigError, match=named):
        from_model_yaml({"optimization": block})


def test_real_sizes_stay_allowed() -> None:
    config = from_model_yaml({"optimization": {
        "compile": {"mode": "default", "batch_sizes": [1, 2, 4, 8, 16, 32, 64]},
        "warmup": {"shapes": [[3, 224, 224], [1, 512]], "count": 8}}})
    assert config is not None and config.compile.batch_sizes == [1, 2, 4, 8, 16, 32, 64]

"""Samples: captured from the handler's own calls, loaded from the archive, or generated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serving.optimize.config import OptimizationConfig, OptimizationConfigError
from serving.optimize.samples import capture_inputs, samples_from_config
from tests.unit.optimize.models import Encoder, seeded


def test_capture_records_args_and_kwargs_up_to_the_limit() -> None:
    model = seeded(Encoder)
    inputs = [torch.randn(2, 16) for _ in range(5)]

    def run() -> None:
        # What a handler does: its own preprocessing, then the model, in inference mode.
        for x in inputs:
            with torch.inference_mode():
                model(x, mask=torch.ones(2))

    samples = capture_inputs(model, run, limit=3)
    assert len(samples) == 3
    args, kwargs = samples[1]
    assert torch.equal(args[0], inputs[1]) and set(kwargs) == {"mask"}
    # Private, ordinary tensors: not views of the handler's buffers, not inference tensors.
    assert args[0].data_ptr() != inputs[1].data_ptr() and not kwargs["mask"].is_inference()
    model(inputs[0])
    assert len(samples) == 3, "the hook must be removed after run"


def test_capture_removes_the_hook_when_run_raises() -> None:
    model = seeded(Encoder)

    def run() -> None:
        model(torch.randn(1, 16))
        raise RuntimeError("handler broke")

    with pytest.raises(RuntimeError):
        capture_inputs(model, run, limit=4)
    assert not model._forward_pre_hooks


def test_warmup_file_accepts_tensors_tuples_kwargs_and_pairs(tmp_path: Path) -> None:
    x = torch.randn(1, 4)
    torch.save([x, (x, x), {"input_ids": x}, ((x,), {"mask": x})], tmp_path / "warm.pt")
    config = OptimizationConfig.model_validate({"warmup": {"file": "warm.pt"}})
    samples = samples_from_config(config, tmp_path)
    assert samples is not None
    shapes = [(len(args), sorted(kwargs)) for args, kwargs in samples]
    assert shapes == [(1, []), (2, []), (0, ["input_ids"]), (1, ["mask"])]


def test_warmup_shapes_generate_seeded_inputs(tmp_path: Path) -> None:
    config = OptimizationConfig.model_validate(
        {
            "warmup": {
                "shapes": [[2, 8], [2, 8]],
                "dtype": ["int64", "int64"],
                "int_range": [0, 100],
                "count": 3,
            }
        }
    )
    first = samples_from_config(config, tmp_path)
    again = samples_from_config(config, tmp_path)
    assert first is not None and again is not None and len(first) == 3
    ids = first[0][0][0]
    assert ids.dtype == torch.int64 and ids.shape == (2, 8) and int(ids.max()) < 100
    assert torch.equal(ids, again[0][0][0])


def test_calibration_file_is_the_last_resort_and_is_capped(tmp_path: Path) -> None:
    torch.save([torch.randn(1, 4) for _ in range(10)], tmp_path / "calib.pt")
    config = OptimizationConfig.model_validate(
        {"quantization": {"calibration_file": "calib.pt", "calibration_batches": 4}}
    )
    samples = samples_from_config(config, tmp_path)
    assert samples is not None and len(samples) == 4
    assert samples_from_config(OptimizationConfig(), tmp_path) is None


def test_paths_must_stay_inside_the_model_dir(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    torch.save([torch.zeros(1)], tmp_path / "outside.pt")
    config = OptimizationConfig.model_validate({"warmup": {"file": "../outside.pt"}})
    with pytest.raises(OptimizationConfigError, match="outside the model dir"):
        samples_from_config(config, tmp_path / "model")

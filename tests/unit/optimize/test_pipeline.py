"""The eager steps under the accuracy guard: applied, refused with a reason, or skipped."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import BertConfig, BertModel

from serving.optimize.config import OptimizationConfig
from serving.optimize.pipeline import build
from serving.optimize.runner import OptimizedModel
from tests.unit.optimize.models import (
    ConvClassifier,
    Encoder,
    MultiOutput,
    image_samples,
    outlier_encoder,
    outlier_inputs,
    seeded,
    vector_samples,
)


def _config(**data: Any) -> OptimizationConfig:
    return OptimizationConfig.model_validate({"device": "cpu", **data})


def _status(report: Any) -> dict[str, str]:
    return {step.name: step.status for step in report.steps}


def test_conv_net_is_folded_and_channels_last_with_the_same_answers() -> None:
    model = seeded(ConvClassifier)
    samples = image_samples()
    x = torch.randn(3, 3, 16, 16)
    expected = model(x).detach()
    optimized, report = build(model, _config(), samples)
    assert report.error is None
    assert _status(report) == {"fold": "applied", "channels_last": "applied", "compile": "skipped"}
    assert report.metric == "top1" and report.step("fold").accuracy["top1_agreement"] == 1.0
    out = optimized(x)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-5)
    # Handler code that reads attributes of its model keeps working.
    assert optimized.labels == model.labels


def test_bf16_autocast_returns_fp32_outputs() -> None:
    model = seeded(ConvClassifier)
    optimized, report = build(model, _config(dtype="bf16"), image_samples())
    assert _status(report)["bf16"] == "applied"
    x = torch.randn(2, 3, 16, 16)
    out = optimized(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, model(x), atol=5e-2)


def test_a_step_over_budget_is_refused_and_the_last_good_one_kept() -> None:
    model = seeded(ConvClassifier)
    config = _config(dtype="bf16", accuracy={"max_abs_error": 1e-5})
    optimized, report = build(model, config, image_samples())
    bf16 = report.step("bf16")
    assert bf16 is not None and bf16.status == "refused"
    assert "max abs error" in bf16.reason and "kept fold+channels_last" in bf16.reason
    assert bf16.accuracy["max_abs_error"] > 1e-5
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(optimized(x), model(x), atol=1e-5)


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_int8_that_destroys_accuracy_is_refused_and_later_steps_continue(mode: str) -> None:
    model = outlier_encoder().eval()
    samples = outlier_inputs()
    optimized, report = build(model, _config(quantization={"mode": mode}, dtype="bf16"), samples)
    int8 = report.step(f"int8_{mode}")
    assert report.metric == "cosine"
    assert int8 is not None and int8.status == "refused", report.to_dict()
    assert "cosine similarity" in int8.reason and int8.accuracy["min_cosine"] < 0.5
    assert _status(report)["bf16"] == "applied"
    x = samples[0][0][0]
    cos = torch.nn.functional.cosine_similarity(optimized(x), model(x)).min()
    assert cos > 0.99


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_int8_on_a_well_behaved_encoder_is_applied(mode: str) -> None:
    model = seeded(Encoder)
    optimized, report = build(model, _config(quantization={"mode": mode}), vector_samples())
    assert _status(report)[f"int8_{mode}"] == "applied"
    assert torch.get_float32_matmul_precision() == "highest"
    x = torch.randn(2, 16)
    assert torch.nn.functional.cosine_similarity(optimized(x), model(x)).min() > 0.99


@pytest.mark.parametrize("as_dict", [False, True])
def test_tuple_and_dict_outputs_keep_their_structure(as_dict: bool) -> None:
    model = seeded(MultiOutput, as_dict)
    optimized, report = build(model, _config(dtype="bf16"), vector_samples())
    assert _status(report)["bf16"] == "applied"
    x = torch.randn(3, 16)
    out, ref = optimized(x), model(x)
    if as_dict:
        assert set(out) == {"logits", "probs", "scale"} and out["scale"].shape == (3,)
        assert out["logits"].dtype == torch.float32 and out["logits"].shape == (3, 4)
    else:
        assert isinstance(out, tuple) and out[1].shape == (3,)
        assert torch.allclose(out[0], ref[0], atol=5e-2)


def test_hugging_face_model_output_and_attributes() -> None:
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=32)
    ).eval()
    ids = torch.randint(0, 100, (2, 8))
    samples = [((), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})]
    config = _config(quantization={"mode": "dynamic"}, dtype="bf16")
    optimized, report = build(bert, config, samples)
    assert report.metric == "cosine"
    assert {"int8_dynamic", "bf16"} <= set(report.applied), report.to_dict()
    out = optimized(input_ids=ids, attention_mask=torch.ones_like(ids))
    ref = bert(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert type(out) is type(ref)
    assert out.last_hidden_state.dtype == torch.float32
    assert torch.allclose(out[0], ref.last_hidden_state, atol=0.1)
    assert optimized.config.hidden_size == 32


def test_static_int8_without_compile_is_skipped_with_a_reason() -> None:
    model = seeded(ConvClassifier)
    _, report = build(model, _config(quantization={"mode": "static"}), image_samples())
    step = report.step("int8_static")
    assert step is not None and step.status == "skipped" and "compile" in step.reason


def test_nothing_to_apply_is_skipped_not_failed() -> None:
    _, report = build(seeded(Encoder), _config(), vector_samples())
    assert _status(report) == {"fold": "skipped", "channels_last": "skipped", "compile": "skipped"}
    assert "batch norm" in report.steps[0].reason


def test_without_samples_only_eval_is_applied() -> None:
    model = seeded(Encoder).train()
    optimized, report = build(model, _config(dtype="bf16"), None)
    assert optimized is model and not model.training
    assert report.steps == [] and "no example inputs" in report.notes[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_models_are_left_alone() -> None:
    scripted = torch.jit.script(seeded(Encoder))
    optimized, report = build(scripted, _config(), vector_samples())
    assert optimized is scripted and "TorchScript" in report.notes[0]


def test_a_handlers_own_torch_compile_is_unwrapped() -> None:
    model = seeded(Encoder)
    optimized, report = build(torch.compile(model), _config(), vector_samples())
    assert isinstance(optimized, OptimizedModel)
    assert "unwrapped" in report.notes[0]


def test_build_never_raises() -> None:
    model = seeded(Encoder)
    bad_samples = [((torch.randn(2, 7),), {})]  # wrong feature size: the reference run fails
    optimized, report = build(model, _config(dtype="bf16"), bad_samples)
    assert optimized is model
    assert report.error is not None and "RuntimeError" in report.error
    assert report.to_dict()["error"] == report.error

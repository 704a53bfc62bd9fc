"""The compile step: buckets warmed up, padding and slicing, stray shapes refused, auto."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from serving.errors import BadRequest
from serving.optimize.config import OptimizationConfig
from serving.optimize.pipeline import build
from serving.optimize.report import PipelineReport
from serving.optimize.runner import UnwarmedShape
from tests.unit.optimize.models import (
    ConvClassifier,
    Encoder,
    ResidualClassifier,
    TokenEncoder,
    image_samples,
    outlier_encoder,
    outlier_inputs,
    seeded,
    token_inputs,
    token_samples,
    vector_samples,
)

Built = tuple[nn.Module, nn.Module, PipelineReport]


def _config(**data: Any) -> OptimizationConfig:
    return OptimizationConfig.model_validate({"device": "cpu", **data})


@pytest.fixture(scope="module")
def static_int8() -> Built:
    """A conv classifier through fold, channels-last, static INT8 and compile, buckets 1 and 4."""
    model = seeded(ConvClassifier)
    config = _config(
        quantization={"mode": "static"}, compile={"mode": "default", "batch_sizes": [1, 4]}
    )
    optimized, report = build(model, config, image_samples())
    return model, optimized, report


@pytest.fixture(scope="module")
def dynamic_batch() -> Built:
    model = seeded(Encoder)
    config = _config(compile={"mode": "default", "dynamic": True, "max_batch": 8})
    optimized, report = build(model, config, vector_samples())
    return model, optimized, report


def test_static_int8_compiled_report(static_int8: Built) -> None:
    _, _, report = static_int8
    assert report.error is None
    assert report.applied == ["fold", "channels_last", "int8_static", "compile"], report.to_dict()
    assert report.buckets == [1, 4]
    assert report.compile_seconds > 0 and report.step("compile").accuracy["top1_agreement"] == 1.0


def test_static_int8_quantizes_a_module_called_several_times() -> None:
    model = seeded(ResidualClassifier).eval()
    config = _config(
        quantization={"mode": "static"}, compile={"mode": "default", "batch_sizes": [2]}
    )
    optimized, report = build(model, config, image_samples())
    step = report.step("int8_static")
    assert step is not None and step.status == "applied", report.to_dict()
    x = torch.randn(2, 3, 16, 16)
    assert optimized(x).argmax(1).tolist() == model(x).argmax(1).tolist()


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 9])
def test_every_batch_is_padded_to_a_bucket_or_chunked(static_int8: Built, batch: int) -> None:
    model, optimized, _ = static_int8
    x = torch.randn(batch, 3, 16, 16)
    out = optimized(x)
    assert out.shape == (batch, 5) and out.dtype == torch.float32
    ref = model(x)
    assert torch.allclose(out, ref, atol=0.05)


def test_a_stray_shape_is_an_error_not_a_compile(static_int8: Built) -> None:
    _, optimized, _ = static_int8
    with pytest.raises(UnwarmedShape) as caught:
        optimized(torch.randn(2, 3, 20, 20))
    assert isinstance(caught.value, BadRequest) and "not warmed up" in caught.value.message


def test_inputs_built_in_inference_mode_hit_the_warmed_graphs(static_int8: Built) -> None:
    _, optimized, _ = static_int8
    with torch.inference_mode():
        x = torch.randn(4, 3, 16, 16)
        assert optimized(x).shape == (4, 5)


def test_dynamic_batch_covers_the_range_and_chunks_above(dynamic_batch: Built) -> None:
    model, optimized, report = dynamic_batch
    assert report.applied == ["compile"] and report.dynamic_batch
    for batch in (1, 2, 5, 8, 11):
        x = torch.randn(batch, 16)
        assert torch.allclose(optimized(x), model(x), atol=1e-4)
    with pytest.raises(UnwarmedShape):
        optimized(torch.randn(2, 17))


def test_sequence_lengths_seen_varying_in_warm_up_are_compiled_dynamic() -> None:
    model = seeded(TokenEncoder)
    config = _config(compile={"mode": "default", "batch_sizes": [1, 4]})
    optimized, report = build(model, config, token_samples())
    assert report.applied == ["compile"], report.to_dict()
    assert report.dynamic_dims == ["[1]['input_ids'] dim 1", "[1]['attention_mask'] dim 1"]
    # Lengths no warm-up input had, at every batch size, through the graphs of warm-up.
    for batch in (1, 3, 4):
        for length in (2, 7, 20, TokenEncoder.MAX_LENGTH):
            args, kwargs = token_inputs(batch, length, seed=length)
            assert torch.allclose(optimized(*args, **kwargs), model(*args, **kwargs), atol=1e-5)
    # Beyond what the model allows, the warmed graphs do not reach: refused, not compiled.
    args, kwargs = token_inputs(2, TokenEncoder.MAX_LENGTH + 1)
    with pytest.raises(UnwarmedShape):
        optimized(*args, **kwargs)


def test_guards_are_skipped_only_for_calls_shaped_like_warm_up(monkeypatch) -> None:
    model = seeded(TokenEncoder)
    config = _config(compile={"mode": "default", "batch_sizes": [1, 4]})
    optimized, _ = build(model, config, token_samples())  # lengths 3, 5 and 9
    stances: list[tuple[str, bool]] = []
    real = torch.compiler.set_stance

    def spy(stance: str = "default", **kwargs: Any) -> Any:
        stances.append((stance, kwargs.get("skip_guard_eval_unsafe", False)))
        return real(stance, **kwargs)

    monkeypatch.setattr(torch.compiler, "set_stance", spy)

    def run(batch: int, length: int) -> tuple[str, bool]:
        args, kwargs = token_inputs(batch, length, seed=length)
        assert torch.allclose(optimized(*args, **kwargs), model(*args, **kwargs), atol=1e-5)
        return stances.pop()

    # Inside the lengths warm-up ran, at a warmed bucket: only the graphs are told apart.
    assert run(3, 3) == run(4, 7) == run(1, 9) == ("default", True)
    # Longer than any warm-up input: every guard runs (and passes: the graph is dynamic).
    assert run(2, 20) == ("fail_on_recompile", False)


def test_a_compile_failure_is_recorded_and_eager_kept() -> None:
    class Breaks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch._dynamo.graph_break()
            return self.proj(x)

    model = seeded(Breaks)
    config = _config(compile={"mode": "default", "fullgraph": True})
    optimized, report = build(model, config, vector_samples())
    step = report.step("compile")
    assert step is not None and step.status == "failed" and "graph_break" in step.reason.lower()
    x = torch.randn(2, 16)
    assert torch.allclose(optimized(x), model(x))


def test_auto_keeps_the_fastest_candidate_that_passes() -> None:
    model = outlier_encoder().eval()
    samples = outlier_inputs()
    config = _config(auto=True, candidates=["eager", "compile", "int8"])
    optimized, report = build(model, config, samples)
    by_name = {c.name: c for c in report.candidates}
    assert set(by_name) == {"eager", "compile", "int8"}
    assert by_name["eager"].passed and by_name["compile"].passed
    assert by_name["eager"].latency_ms is not None and by_name["compile"].latency_ms is not None
    int8 = by_name["int8"]
    assert not int8.passed and "int8_dynamic refused" in int8.reason
    fastest = min((c for c in report.candidates if c.passed), key=lambda c: c.latency_ms or 0.0)
    assert report.chosen == fastest.name
    assert ("compile" in report.applied) == (report.chosen == "compile")
    x = samples[0][0][0]
    cos = torch.nn.functional.cosine_similarity(optimized(x), model(x)).min()
    assert cos > 0.99
    assert report.to_dict()["candidates"][0]["latency_ms"] is not None


class WrongAtEight(nn.Module):
    """Right at every batch size but 8: what a miscompiled bucket looks like to a client."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        return y.flip(-1) if x.shape[0] == 8 else y


def test_every_compiled_bucket_is_guarded_and_listed() -> None:
    # Dynamo with the eager backend: one graph per bucket as with Inductor, in a fraction
    # of the time. The samples have one row, so only bucket 1 is their own size.
    samples = vector_samples(count=3, batch=1)
    config = _config(compile={"mode": "default", "backend": "eager", "batch_sizes": [1, 4, 8]})
    _, report = build(seeded(Encoder), config, samples)
    step = report.step("compile")
    assert step is not None and step.status == "applied", step
    assert sorted(step.per_batch) == ["1", "4", "8"]
    assert all(m["min_cosine"] > 0.999 for m in step.per_batch.values())

    model = seeded(WrongAtEight)
    optimized, report = build(model, config, samples)
    step = report.step("compile")
    assert step is not None and step.status == "refused"
    assert step.reason.startswith("batch 8: top-1 agreement")
    assert sorted(step.per_batch) == ["1", "4", "8"]
    assert report.buckets == []  # served uncompiled: no bucket padding
    x = torch.randn(3, 16)
    assert torch.equal(optimized(x), model(x))

"""`auto`'s candidate list follows the CPU's features; on AVX2 only, the ones that help there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from serving.optimize.candidates import default_candidates
from serving.optimize.config import OptimizationConfig
from serving.optimize.hardware import (
    cpu_features,
    detected_cpu_features,
    feature_source,
    override_cpu_features,
    parse_feature_list,
)
from serving.optimize.pipeline import build
from tests.unit.optimize.models import ConvClassifier, Encoder, image_samples, seeded

CPU = torch.device("cpu")


@pytest.fixture
def avx2_only() -> Iterator[None]:
    override_cpu_features(frozenset({"avx2"}))
    try:
        yield
    finally:
        override_cpu_features(None)


def test_the_feature_list_parses_and_an_override_wins_until_cleared() -> None:
    assert parse_feature_list(" AVX2, avx512f  fma") == {"avx2", "avx512f"}
    assert parse_feature_list("") is None and parse_feature_list(None) is None
    override_cpu_features(frozenset({"avx2"}))
    try:
        assert cpu_features() == {"avx2"} and feature_source() == "injected"
    finally:
        override_cpu_features(None)
    assert cpu_features() == detected_cpu_features() and feature_source() == "detected"


def test_avx2_only_skips_bf16_and_adds_dynamic_int8(avx2_only: None) -> None:
    planned = dict(default_candidates(CPU, ConvClassifier()))
    assert planned["eager"] is None and planned["compile"] is None
    assert "bf16" in (planned["bf16"] or "")
    assert planned["int8"] is None  # static INT8 measured too: 1.25x there, maybe the best
    assert planned["int8_dynamic"] is None  # the conv net's Linear head


def test_int8_dot_product_cpus_try_static_int8_and_not_the_dynamic_duplicate() -> None:
    override_cpu_features(frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
    try:
        planned = dict(default_candidates(CPU, ConvClassifier()))
    finally:
        override_cpu_features(None)
    assert planned["bf16"] is None and planned["int8"] is None
    assert "static INT8 quantizes the Linear layers" in (planned["int8_dynamic"] or "")


def test_a_linear_only_model_has_one_int8_candidate_which_is_dynamic(avx2_only: None) -> None:
    planned = dict(default_candidates(CPU, Encoder()))
    assert planned["int8"] is None and "int8_dynamic" not in planned


def test_auto_on_avx2_runs_compiled_fp32_channels_last_and_both_int8s(avx2_only: None) -> None:
    """Real builds of every candidate (no explicit list): the AVX2 defaults."""
    model = seeded(ConvClassifier)
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "auto": True, "compile": {"batch_sizes": [1, 2]}})
    samples = image_samples()
    optimized, report = build(model, config, samples)
    by_name = {c.name: c for c in report.candidates}
    assert list(by_name) == ["eager", "compile", "bf16", "int8", "int8_dynamic"]
    assert by_name["bf16"].reason.startswith("skipped") and not by_name["bf16"].passed
    assert "int8_static" in by_name["int8"].applied, by_name["int8"].reason
    compiled = by_name["compile"]
    assert compiled.passed and {"fold", "channels_last", "compile"} <= set(compiled.applied)
    dynamic = by_name["int8_dynamic"]
    assert dynamic.passed, dynamic.reason
    assert "int8_dynamic" in dynamic.applied and "compile" in dynamic.applied
    assert dynamic.latency_ms is not None and "top1_agreement" in dynamic.accuracy
    assert report.cpu_features == ["avx2"] and report.cpu_features_source == "injected"
    fastest = min((c for c in report.candidates if c.passed), key=lambda c: c.latency_ms or 0)
    assert report.chosen == fastest.name
    assert report.why is not None and report.why.startswith(f"chose {fastest.name} (")
    assert "x over eager" in report.why or fastest.name == "eager"
    assert "not counted: bf16 skipped" in report.why
    ready = report.ready_line()
    assert "auto on injected CPU features avx2" in ready
    assert report.to_dict()["ready"] == ready
    x = samples[0][0][0]
    assert torch.equal(optimized(x).argmax(-1), model(x).argmax(-1))


def test_why_names_the_speed_up_and_what_did_not_count_and_why() -> None:
    from serving.optimize.candidates import why_chosen
    from serving.optimize.report import CandidateRecord, PipelineReport

    report = PipelineReport(candidates=[
        CandidateRecord("eager", True, latency_ms=100.0),
        CandidateRecord("compile", True, latency_ms=40.0, accuracy={"top1_agreement": 1.0}),
        CandidateRecord("bf16", False, reason="skipped: no native bf16"),
        CandidateRecord("int8_dynamic", False,
                        reason="int8_dynamic refused: top-1 agreement 0.9375 < 0.99"),
        CandidateRecord("int8", False, reason="RuntimeError: boom"),
    ])
    why = why_chosen(report, report.candidates[1])
    assert why == ("chose compile (40.00 ms, 2.50x over eager, top-1 agreement 100%); "
                   "slower: eager 100.00 ms; not counted: bf16 skipped, "
                   "int8_dynamic refused (accuracy), int8 failed")
    assert why_chosen(report, None).startswith("no candidate passed")

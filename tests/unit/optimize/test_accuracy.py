"""The accuracy guard's metrics and verdicts."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from serving.optimize.accuracy import AccuracyGuard, choose_metric
from serving.optimize.config import AccuracyConfig
from serving.optimize.report import PipelineReport, StepRecord


def _guard(reference: list[torch.Tensor], **config: object) -> AccuracyGuard:
    samples = [((torch.zeros(1),), {}) for _ in reference]
    return AccuracyGuard(AccuracyConfig.model_validate(config), samples, reference)


def test_auto_metric_picks_top1_for_logits_and_cosine_for_embeddings() -> None:
    logits = [torch.randn(4, 10)]
    embeddings = [F.normalize(torch.randn(4, 10), dim=-1)]
    hidden = [(torch.randn(4, 3, 8), torch.randn(4, 8))]
    config = AccuracyConfig()
    assert choose_metric(config, logits) == "top1"
    assert choose_metric(config, embeddings) == "cosine"
    assert choose_metric(config, hidden) == "cosine"


def test_auto_metric_picks_error_bounds_for_one_number_per_row() -> None:
    scores = torch.tensor([[2.0], [-1.0], [0.5]])  # a regression head: [batch, 1]
    guard = _guard([scores])
    assert guard.metric == "max_abs"
    assert choose_metric(AccuracyConfig(), [scores[:, 0]]) == "max_abs"
    # A cosine would pass any positive rescaling; the default relative budget (2%) does not.
    assert guard.judge([[scores * 1.01]]).passed
    verdict = guard.judge([[scores * 1.5]])
    assert not verdict.passed and "max rel error 0.5 > 0.02" in verdict.reason


def test_top1_counts_disagreeing_rows() -> None:
    ref = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0]])
    guard = _guard([ref], min_top1_agreement=0.75)
    assert guard.metric == "top1"
    flipped = ref.clone()
    flipped[0] = torch.tensor([0.0, 3.0])
    verdict = guard.judge([[flipped]])
    assert verdict.passed and verdict.metrics["top1_agreement"] == 0.75
    flipped[1] = torch.tensor([3.0, 0.0])
    verdict = guard.judge([[flipped]])
    assert not verdict.passed and "top-1 agreement 0.5000" in verdict.reason


def test_cosine_uses_the_worst_row() -> None:
    ref = F.normalize(torch.randn(3, 8), dim=-1)
    out = ref.clone()
    out[2] = -out[2]
    verdict = _guard([ref]).judge([[out]])
    assert not verdict.passed and verdict.metrics["min_cosine"] < -0.99


def test_explicit_error_budgets_apply_on_top_of_the_metric() -> None:
    ref = F.normalize(torch.randn(3, 8), dim=-1)
    verdict = _guard([ref], max_abs_error=0.0).judge([[ref + 1e-4]])
    assert not verdict.passed and "max abs error" in verdict.reason
    assert _guard([ref], max_rel_error=0.01).judge([[ref + 1e-4]]).passed


def test_nan_and_structure_changes_fail() -> None:
    ref = torch.randn(2, 4)
    guard = _guard([ref], metric="cosine")
    assert not guard.judge([[torch.full((2, 4), float("nan"))]]).passed
    assert "shape" in guard.judge([[torch.randn(2, 5)]]).reason
    assert "tensors" in guard.judge([[ref, ref]]).reason


def test_padded_token_positions_do_not_count() -> None:
    # Two texts padded to 4 tokens: the second has 2 real ones. Per-token hidden states.
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    sample = ((), {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": mask})
    ref = torch.randn(2, 4, 8)
    config = AccuracyConfig()
    guard = AccuracyGuard(config, [sample], [ref])
    garbage = ref.clone()
    garbage[1, 2:] = torch.randn(2, 8) * 100  # what padded positions may hold: anything
    assert guard.metric == "cosine" and guard.judge([[garbage]]).passed
    wrong = ref.clone()
    wrong[1, 1] = -wrong[1, 1] * 10  # a real token that moved: still refused
    verdict = guard.judge([[wrong]])
    assert not verdict.passed and "cosine" in verdict.reason
    unmasked = AccuracyGuard(config, [((ref,), {})], [ref])
    assert not unmasked.judge([[garbage]]).passed


def test_one_non_finite_value_where_the_reference_is_finite_fails() -> None:
    ref = torch.randn(4, 10)
    for metric in ("top1", "cosine", "max_abs"):
        guard = _guard([ref], metric=metric, max_abs_error=1.0)
        for bad in (float("nan"), float("inf"), float("-inf")):
            out = ref.clone()
            out[2, 7] = bad
            verdict = guard.judge([[out]])
            assert not verdict.passed, (metric, bad)
            assert verdict.reason == "1 NaN/inf output value(s) where the reference is finite"
            assert verdict.metrics["non_finite"] == 1.0


def test_where_the_reference_is_non_finite_the_candidate_is_not_judged() -> None:
    ref = torch.randn(4, 10)
    ref[0, 3] = float("nan")
    ref[1, 1] = float("inf")
    guard = _guard([ref], metric="cosine")
    same = ref.clone()
    assert guard.judge([[same]]).passed
    finite_there = ref.clone()
    finite_there[0, 3], finite_there[1, 1] = 0.5, 1e30
    assert guard.judge([[finite_there]]).passed
    # A reference with a NaN somewhere must not excuse NaNs anywhere else.
    elsewhere = ref.clone()
    elsewhere[3, 9] = float("nan")
    verdict = guard.judge([[elsewhere]])
    assert not verdict.passed and "NaN/inf" in verdict.reason


def test_padded_token_positions_may_even_hold_nan() -> None:
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    sample = ((), {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": mask})
    ref = torch.randn(2, 4, 8)
    guard = AccuracyGuard(AccuracyConfig(), [sample], [ref])
    out = ref.clone()
    out[1, 3] = float("nan")
    assert guard.judge([[out]]).passed
    out[0, 3, 0] = float("nan")  # a real token
    assert not guard.judge([[out]]).passed


def test_the_report_of_non_finite_metrics_is_valid_json() -> None:
    report = PipelineReport()
    report.record(StepRecord("compile", "refused", accuracy={
        "max_rel_error": math.inf, "min_cosine": math.nan, "non_finite": 3.0}))
    step = json.loads(json.dumps(report.to_dict(), allow_nan=False))["steps"][0]
    assert step["accuracy"] == {"max_rel_error": "inf", "min_cosine": "nan", "non_finite": 3.0}


def test_every_batch_size_asked_for_is_run_and_reported() -> None:
    seen: list[int] = []

    def doubles(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x * 2

    samples = [((torch.randn(2, 3),), {}) for _ in range(2)]
    reference = [args[0] * 2 for args, _ in samples]
    guard = AccuracyGuard(AccuracyConfig(metric="cosine"), samples, reference)
    verdict = guard.check(doubles, batch_sizes=[1, 2, 4, 8])
    assert verdict.passed and sorted(verdict.per_batch) == [1, 2, 4, 8]
    assert seen == [2, 2, 1, 1, 4, 4, 8, 8]  # batch 2 is the samples' own: run once

    def wrong_at_eight(x: torch.Tensor) -> torch.Tensor:
        return -x * 2 if x.shape[0] == 8 else x * 2

    verdict = guard.check(wrong_at_eight, batch_sizes=[1, 4, 8])
    assert not verdict.passed and verdict.reason.startswith("batch 8: cosine similarity")
    assert sorted(verdict.per_batch) == [1, 4, 8]

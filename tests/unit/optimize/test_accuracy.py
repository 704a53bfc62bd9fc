"""The accuracy guard's metrics and verdicts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from serving.optimize.accuracy import AccuracyGuard, choose_metric
from serving.optimize.config import AccuracyConfig


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

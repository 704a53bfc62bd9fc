"""The accuracy guard: an optimised model is compared with the fp32 eager reference before ready."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from serving.optimize.batching import Sample, batch_size, resize_batch, tensor_leaves
from serving.optimize.config import AccuracyConfig


@dataclass(frozen=True)
class Verdict:
    passed: bool
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    # Metrics of each batch size the candidate was also run at (`check(batch_sizes=...)`).
    per_batch: dict[int, dict[str, float]] = field(default_factory=dict)


# The budget of `max_abs` when `auto` picked it and the config gives none: the largest
# difference may be 2% of the reference's largest magnitude.
DEFAULT_MAX_REL_ERROR = 0.02


def choose_metric(config: AccuracyConfig, reference: list[Any]) -> str:
    """`auto`: top-1 agreement for a single 2-D logits output; max abs/rel error when every
    row is one number (scores, regression: a cosine of one number is only its sign);
    cosine similarity otherwise (embeddings, hidden states, several outputs).

    Rows of unit L2 norm are embeddings, not logits, even when the output is 2-D.
    """
    if config.metric != "auto":
        return config.metric
    leaves = [t for out in reference for t in tensor_leaves(out) if t.is_floating_point()]
    if leaves and all(t.dim() <= 1 or t[0].numel() == 1 for t in leaves):
        return "max_abs"
    per_call = len(leaves) // max(len(reference), 1)
    if per_call == 1 and all(t.dim() == 2 and t.shape[-1] >= 2 for t in leaves):
        norms = torch.cat([t.float().norm(dim=-1) for t in leaves])
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            return "top1"
    return "cosine"


class AccuracyGuard:
    """Holds the reference outputs; `check` runs a candidate on the same inputs and judges it."""

    def __init__(self, config: AccuracyConfig, samples: list[Sample], reference: list[Any]) -> None:
        self.config = config
        self.samples = samples
        self.reference = [tensor_leaves(out) for out in reference]
        self.metric = choose_metric(config, reference)
        self.masks = [padding_mask(sample) for sample in samples]

    @classmethod
    def from_model(
        cls, config: AccuracyConfig, model: Callable[..., Any], samples: list[Sample]
    ) -> AccuracyGuard:
        samples = samples[: config.samples]
        with torch.inference_mode():
            reference = [model(*args, **kwargs) for args, kwargs in samples]
        return cls(config, samples, reference)

    def check(self, candidate: Callable[..., Any], batch_sizes: Sequence[int] = ()) -> Verdict:
        """Judge `candidate` on the samples as captured, then on every sample resized to each
        of `batch_sizes` (rows repeated or cut), against the reference rows resized the same
        way: every compiled graph (one per batch bucket) is compared, not only those the
        samples' own sizes reach. A model's rows are independent in eval mode, which padded
        batches already rely on."""
        verdict = self._check_at(candidate, None)
        if not verdict.passed:
            return verdict
        per_batch: dict[int, dict[str, float]] = {}
        for size in batch_sizes:
            if all(batch_size(s) in (None, size) for s in self.samples):
                per_batch[size] = verdict.metrics  # what the first pass ran
                continue
            at_size = self._check_at(candidate, size)
            per_batch[size] = at_size.metrics
            if not at_size.passed:
                return Verdict(False, at_size.metrics, f"batch {size}: {at_size.reason}",
                               per_batch)
        return Verdict(True, verdict.metrics, "", per_batch)

    def _check_at(self, candidate: Callable[..., Any], size: int | None) -> Verdict:
        samples, references = self.samples, self.reference
        if size is not None:
            resized = [_resized(s, r, size) for s, r in zip(samples, references, strict=True)]
            samples = [s for s, _ in resized]
            references = [r for _, r in resized]
        outputs = []
        for args, kwargs in samples:
            with torch.inference_mode():
                outputs.append(tensor_leaves(candidate(*args, **kwargs)))
        return self._judge(references, outputs, [padding_mask(s) for s in samples])

    def judge(self, outputs: list[list[torch.Tensor]]) -> Verdict:
        return self._judge(self.reference, outputs, self.masks)

    def _judge(self, references: list[list[torch.Tensor]], outputs: list[list[torch.Tensor]],
               masks: list[torch.Tensor | None]) -> Verdict:
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for ref, out, mask in zip(references, outputs, masks, strict=True):
            if len(ref) != len(out):
                return Verdict(False, reason=f"output has {len(out)} tensors, reference {len(ref)}")
            for r, o in zip(ref, out, strict=True):
                if r.shape != o.shape:
                    why = f"output shape {tuple(o.shape)} != {tuple(r.shape)}"
                    return Verdict(False, reason=why)
                if not r.is_floating_point() and not torch.equal(r, o.to(r.device)):
                    return Verdict(False, reason="integer output differs from the reference")
                if r.is_floating_point():
                    pairs.append(_unpadded(r.detach().float().cpu(), o.detach().float().cpu(),
                                           mask))
        metrics = _metrics(pairs, classify=self.metric == "top1")
        return self._verdict(metrics)

    def _verdict(self, metrics: dict[str, float]) -> Verdict:
        cfg = self.config
        bad = metrics.get("non_finite", 0.0)
        if bad > 0:
            return Verdict(False, metrics,
                           f"{int(bad)} NaN/inf output value(s) where the reference is finite")
        if any(math.isnan(v) for v in metrics.values()):
            return Verdict(False, metrics, "an accuracy metric is NaN")
        checks: list[tuple[str, bool, str]] = []
        if self.metric == "top1":
            agree = metrics["top1_agreement"]
            checks.append(("top1", agree >= cfg.min_top1_agreement,
                           f"top-1 agreement {agree:.4f} < {cfg.min_top1_agreement}"))
        elif self.metric == "cosine":
            cos = metrics["min_cosine"]
            checks.append(("cosine", cos >= cfg.min_cosine,
                           f"cosine similarity {cos:.4f} < {cfg.min_cosine}"))
        if cfg.max_abs_error is not None:
            err = metrics["max_abs_error"]
            checks.append(("abs", err <= cfg.max_abs_error,
                           f"max abs error {err:.3g} > {cfg.max_abs_error}"))
        max_rel = cfg.max_rel_error
        if self.metric == "max_abs" and max_rel is None and cfg.max_abs_error is None:
            max_rel = DEFAULT_MAX_REL_ERROR
        if max_rel is not None:
            err = metrics["max_rel_error"]
            checks.append(("rel", err <= max_rel, f"max rel error {err:.3g} > {max_rel}"))
        failed = [why for _, ok, why in checks if not ok]
        return Verdict(not failed, metrics, "; ".join(failed))


def _resized(sample: Sample, reference: list[torch.Tensor], size: int
             ) -> tuple[Sample, list[torch.Tensor]]:
    """`sample` with `size` rows and the reference outputs those rows must give."""
    n = batch_size(sample)
    if n is None or n == size:
        return sample, reference
    rows: Sample = ((*reference,), {})
    return resize_batch(sample, n, size), list(resize_batch(rows, n, size)[0])


def padding_mask(sample: Sample) -> torch.Tensor | None:
    """The call's `attention_mask` ([batch, sequence], 1 for real tokens), if it has one."""
    mask = sample[1].get("attention_mask") if isinstance(sample[1], dict) else None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.detach().cpu() != 0
    return None


def _unpadded(ref: torch.Tensor, out: torch.Tensor, mask: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token outputs with padded positions zeroed in both: their values are undefined
    (a handler masks them out), and INT8 moves them far more than the real tokens."""
    if mask is None or ref.dim() < 2 or tuple(ref.shape[:2]) != tuple(mask.shape):
        return ref, out
    keep = mask.reshape(*mask.shape, *([1] * (ref.dim() - 2)))
    # `where`, not a product: a NaN at a padded position times zero would still be NaN.
    return torch.where(keep, ref, 0.0), torch.where(keep, out, 0.0)


def _metrics(pairs: list[tuple[torch.Tensor, torch.Tensor]], classify: bool) -> dict[str, float]:
    if not pairs:
        return {}
    max_abs = 0.0
    max_rel = 0.0
    min_cos = 1.0
    non_finite = 0
    agree = total = 0
    for ref, out in pairs:
        # Where the reference itself is NaN/inf (a log of zero, an overflow in fp32) the
        # candidate may hold anything; everywhere else it must be finite.
        ref_ok = torch.isfinite(ref)
        bad = int((ref_ok & ~torch.isfinite(out)).sum())
        if bad:
            non_finite += bad
            continue  # judged by the count alone: its differences would be NaN/inf
        if not bool(ref_ok.all()):
            ref, out = torch.where(ref_ok, ref, 0.0), torch.where(ref_ok, out, 0.0)
        diff = (ref - out).abs().max().item() if ref.numel() else 0.0
        max_abs = max(max_abs, diff)
        scale = ref.abs().max().item() if ref.numel() else 0.0
        max_rel = max(max_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))
        min_cos = min(min_cos, _min_row_cosine(ref, out))
        if classify:
            agree += int((ref.argmax(dim=-1) == out.argmax(dim=-1)).sum())
            total += ref.shape[0]
    metrics = {"max_abs_error": max_abs, "max_rel_error": max_rel, "min_cosine": min_cos,
               "non_finite": float(non_finite)}
    if classify:
        metrics["top1_agreement"] = agree / total if total else 1.0
    return metrics


def _min_row_cosine(ref: torch.Tensor, out: torch.Tensor) -> float:
    """The worst sample's cosine similarity; rows that are zero in both count as equal."""
    rows_ref = ref.reshape(ref.shape[0], -1) if ref.dim() >= 2 else ref.reshape(1, -1)
    rows_out = out.reshape(rows_ref.shape)
    dot = (rows_ref * rows_out).sum(dim=1)
    norms = rows_ref.norm(dim=1) * rows_out.norm(dim=1)
    both_zero = (rows_ref.norm(dim=1) == 0) & (rows_out.norm(dim=1) == 0)
    cos = torch.where(norms > 0, dot / norms.clamp_min(1e-30), both_zero.float())
    return float(cos.min()) if cos.numel() else 1.0

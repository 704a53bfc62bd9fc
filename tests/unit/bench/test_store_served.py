"""The store benchmark's rules on its committed run, and on that run with one thing broken.

The run itself takes a quiet box and minutes (`python -m bench.store_served`, results in
bench/results/store/); here its raw rows are fed back to `failures`, `summary` and `agreement`,
so what decides whether a run counts, and the figures the report quotes, are checked wherever
the suite runs.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.store_served import agreement, failures, images, summary

RAW = Path(__file__).resolve().parents[3] / "bench/results/store/raw"


def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (RAW / "store.jsonl").read_text().splitlines()]


def test_the_recorded_run_counts_and_its_figures_are_the_report_s() -> None:
    recorded = rows()
    assert failures(recorded) == []
    assert json.loads((RAW / "run.json").read_text())["failures"] == []
    report = (RAW.parent / "report.md").read_text()
    for cell in summary(recorded):
        assert cell["reps"] >= 3
        ratio = sorted(cell["ratios"])[len(cell["ratios"]) // 2]
        assert f"**{ratio:.2f}x" in report  # the median ratio the README may quote


def test_a_precompiled_start_that_compiled_instead_does_not_count() -> None:
    broken = copy.deepcopy(rows())
    victim = next(r for r in broken if r["variant"] == "precompiled")
    victim["package_used"] = False
    (problem,) = failures(broken)
    assert "did not serve the store's package" in problem
    assert f"rep {victim['rep']} {victim['level']}" in problem


@pytest.mark.parametrize("field, value", [("error_count", 3), ("ok", 0)])
def test_errors_or_no_answers_make_the_run_not_count(field: str, value: int) -> None:
    broken = copy.deepcopy(rows())
    broken[-1][field] = value
    assert len(failures(broken)) == 1


def test_ratios_pair_each_rep_with_itself() -> None:
    base = {"model": "m", "level": "b1", "package_used": True, "p99_ms": 1.0}
    made = [{**base, "variant": "plain", "rep": 0, "rps": 10.0},
            {**base, "variant": "precompiled", "rep": 0, "rps": 30.0},
            {**base, "variant": "plain", "rep": 1, "rps": 20.0},
            {**base, "variant": "precompiled", "rep": 1, "rps": 30.0},
            {**base, "variant": "plain", "rep": 2, "rps": 5.0}]  # its pair never ran
    cell = next(c for c in summary(made) if c["level"] == "b1")
    assert cell["reps"] == 2
    assert cell["ratios"] == [3.0, 1.5]


def test_agreement_counts_top1_matches_and_cosines() -> None:
    top = agreement("resnet50", ["1", "2", "3", "4"], ["1", "2", "3", "9"])
    assert top["top1_agreement"] == 0.75
    emb = agreement("minilm", [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]])
    assert emb["cosine_min"] == pytest.approx(math.sqrt(0.5))
    assert emb["cosine_mean"] == pytest.approx((1 + math.sqrt(0.5)) / 2)


def test_the_images_are_decodable_jpegs_of_varied_sizes() -> None:
    from io import BytesIO

    from PIL import Image

    sizes = set()
    for body in images(count=6):
        with Image.open(BytesIO(body)) as image:
            assert image.format == "JPEG"
            sizes.add(image.size)
    assert len(sizes) == 6

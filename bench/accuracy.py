"""minilm's answers on real sentences: each server's served embeddings against the fp32 reference.

The reference is the archive's own handler run in process, fp32 eager, without the
`optimization:` block (what TorchServe runs from the same `.mar`). Each server is asked for
every sentence of `bench.sentences` (3 to 120 words) one request at a time; the figure per
sentence is the cosine similarity of the served embedding and the reference's.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.archive import load_service, predict_call


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """cos(a, b); nan when either is all zeros or the lengths differ."""
    if len(a) != len(b):
        return math.nan
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else math.nan


def reference(mar: Path, sentences: Sequence[str]) -> list[list[float]]:
    """The archive's handler in this process, one sentence per call (fp32 eager)."""
    with tempfile.TemporaryDirectory(prefix="accuracy-") as tmp:
        service = load_service(mar, Path(tmp), batch_size=1)
        out = []
        for text in sentences:
            (vector,) = predict_call(service, [text.encode()], "text/plain")()
            out.append([float(v) for v in vector])
    return out


def served(base_url: str, model: str, sentences: Sequence[str],
           timeout_s: float = 60.0) -> list[list[float]]:
    """POST each sentence as text/plain to /predictions/{model}; raises on a non-200."""
    out = []
    for text in sentences:
        request = urllib.request.Request(f"{base_url}/predictions/{model}", data=text.encode(),
                                         headers={"Content-Type": "text/plain"}, method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            vector = json.loads(resp.read())
        if not isinstance(vector, list) or not all(isinstance(v, int | float) for v in vector):
            raise ValueError(f"{base_url}: expected a list of floats, got {str(vector)[:200]}")
        out.append([float(v) for v in vector])
    return out


def compare(label: str, got: Sequence[Sequence[float]], ref: Sequence[Sequence[float]],
            sentences: Sequence[str]) -> list[dict[str, Any]]:
    """One row per sentence: its word count and the cosine of `got` against `ref`."""
    return [{"label": label, "sentence": i, "words": len(text.split()),
             "cosine": cosine(g, r)}
            for i, (text, g, r) in enumerate(zip(sentences, got, ref, strict=True))]


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median, mean and min cosine of the rows, and how many sentences they cover."""
    values = [float(r["cosine"]) for r in rows if not math.isnan(float(r["cosine"]))]
    if not values:
        return {"n": 0, "median": math.nan, "mean": math.nan, "min": math.nan}
    return {"n": len(values), "median": statistics.median(values),
            "mean": statistics.fmean(values), "min": min(values)}


def section(rows: Sequence[dict[str, Any]], sentences: Sequence[str]) -> str:
    """The report's accuracy section (markdown)."""
    words = [len(s.split()) for s in sentences]
    lines = ["## Accuracy on real inputs", "",
             f"minilm (real all-MiniLM-L6-v2 weights) on {len(sentences)} English sentences of "
             f"{min(words, default=0)} to {max(words, default=0)} words (`bench/sentences.py`), "
             "one request each: cosine similarity of each served embedding to the fp32 eager "
             "reference (the archive's handler in process, without its `optimization:` block).",
             "", "| server | sentences | median cosine | mean | min |", "|---|---:|---:|---:|---:|"]
    for label in dict.fromkeys(str(r["label"]) for r in rows):
        s = summary([r for r in rows if r["label"] == label])
        lines.append(f"| {label} | {s['n']} | {s['median']:.6f} | {s['mean']:.6f} | "
                     f"{s['min']:.6f} |")
    lines += ["", "resnet50 has **random weights** (no trained ResNet-50 weights ship with the "
              "project): its classes mean nothing, and no accuracy is claimed for it here. "
              "It measures real ResNet-50 compute only.", ""]
    return "\n".join(lines)

"""`auto` on a real server told it runs on an AVX2-only CPU (the `cpu_features` setting):
the candidates that help there are built and measured for real, skipped ones say why, and
the log shows each candidate's verdict and one line when the model is ready."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.integration.test_optimization import WARMUP, conv_files, conv_mar  # noqa: F401
from tests.support.server import ServerProcess

AUTO = ("optimization:\n  auto: true\n  compile: {batch_sizes: [1, 4]}\n" + WARMUP)


@pytest.fixture(scope="module")
def avx2_server(store: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, model_store=store, env={"SERVING_CPU_FEATURES": "avx2"}) as srv:
        srv.wait_ready()
        yield srv


def test_auto_on_an_injected_avx2_cpu(avx2_server: ServerProcess, store: Path,
                                      conv_files: Path) -> None:  # noqa: F811
    conv_mar(store, conv_files, "avx2conv", AUTO)
    r = avx2_server.management.post("/models", params={"url": "avx2conv.mar"})
    assert r.status_code == 200, r.text
    report = avx2_server.management.get("/models/avx2conv").json()[0]["optimization"]["report"]

    assert report["cpu_features"] == ["avx2"] and report["cpu_features_source"] == "injected"
    candidates = {c["name"]: c for c in report["candidates"]}
    assert list(candidates) == ["eager", "compile", "bf16", "int8", "int8_dynamic"]
    assert candidates["bf16"]["reason"].startswith("skipped: no native bf16")
    for name in ("eager", "compile", "int8", "int8_dynamic"):  # built, timed, guarded
        assert candidates[name]["passed"], candidates[name]
        assert candidates[name]["latency_ms"] > 0 and candidates[name]["accuracy"]
    assert "channels_last" in candidates["compile"]["applied"]
    assert "int8_dynamic" in candidates["int8_dynamic"]["applied"]
    assert "int8_static" in candidates["int8"]["applied"]
    fastest = min((c for c in report["candidates"] if c["passed"]),
                  key=lambda c: c["latency_ms"])
    assert report["chosen"] == fastest["name"]
    assert report["why"].startswith(f"chose {fastest['name']} (")

    body = json.loads((conv_files / "warm1.json").read_text())
    answer = avx2_server.inference.post("/predictions/avx2conv", json=body)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["logits"]) == 5 and torch.isfinite(
        torch.tensor(answer.json()["logits"])).all()

    log = avx2_server.log()
    assert "auto: 5 candidates on cpu (CPU features injected: avx2)" in log
    for i, name in enumerate(candidates, 1):
        assert re.search(rf"auto \[{i}/5\] {name}: ", log), name
    assert re.search(r"auto \[3/5\] bf16: skipped: no native bf16", log)
    assert "compiling fold+channels_last" in log and "compiled and warmed up in" in log
    ready = re.findall(r"avx2conv/1\.0 ready: (.*)", log)
    assert ready, log[-3000:]
    assert ready[-1] == report["ready"]
    assert "auto on injected CPU features avx2: chose " in ready[-1]
    assert ready[-1].startswith("+".join(report["applied"]))

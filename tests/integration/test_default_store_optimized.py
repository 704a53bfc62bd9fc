"""The optimised default store as `scripts/serve.sh` builds it: the optimization: block in the
archives, the precompiled package cache, and a real start that serves from the package.

Cost, on purpose bounded: only minilm is precompiled here (auto's candidates compile it a
few times, minutes on a small box, once per machine), in the cache `scripts/serve.sh` uses
(model_store/build/.cache), so a machine that served the default store, or ran this test
before, pays nothing; resnet50 is only archived, never compiled, by these tests.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from model_store.build import DEFAULT_OUT, Flavour, build_all
from serving.optimize.config import check_named_files, from_model_yaml
from tests.support.server import ServerProcess

CACHE = DEFAULT_OUT / ".cache"


def _config(mar: Path) -> dict[str, Any]:
    with zipfile.ZipFile(mar) as zf:
        return dict(yaml.safe_load(zf.read("model-config.yaml")))


def test_the_optimised_archives_carry_a_valid_block_and_their_warmup_bodies(
        tmp_path: Path) -> None:
    built = build_all(tmp_path, only=["resnet50", "minilm"], flavour=Flavour(optimize=True))
    for name, mar in built.items():
        unpacked = tmp_path / f"{name}-unpacked"
        with zipfile.ZipFile(mar) as zf:
            zf.extractall(unpacked)
        config = from_model_yaml(_config(mar))
        assert config is not None and config.auto and config.compile.batch_sizes == [1, 8]
        assert config.precompiled is None  # no package asked for
        check_named_files(config, unpacked)  # every warm-up body is inside
        assert len(config.warmup.requests or []) == 16
    resnet = tmp_path / "resnet50-unpacked"
    sizes = {Image.open(io.BytesIO((resnet / f"warmup-{i:02d}.jpg").read_bytes())).size
             for i in range(16)}
    assert len(sizes) > 8  # real images of varied sizes, resized by the handler
    minilm = tmp_path / "minilm-unpacked"
    lengths = {len((minilm / f"warmup-{i:02d}.txt").read_text().split()) for i in range(16)}
    assert min(lengths) <= 4 and max(lengths) >= 20  # two batches, two sequence lengths
    # The plain flavour (what build_all gives by default) has no block.
    plain = build_all(tmp_path / "plain", only=["minilm"])["minilm"]
    assert "optimization" not in _config(plain)


@pytest.mark.slow
def test_precompiled_minilm_is_cached_and_a_real_start_serves_the_package(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="model_store.build")
    flavour = Flavour(optimize=True, precompile=True, cache=CACHE)
    build_all(tmp_path, only=["minilm"], flavour=flavour)  # a miss only on a new machine
    caplog.clear()
    mar = build_all(tmp_path, force=True, only=["minilm"], flavour=flavour)["minilm"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("precompiled package cache hit" in m for m in messages), messages
    assert any("package cache hit" in m and "built" in m for m in messages), messages
    assert not any("running auto's candidates" in m for m in messages)
    config = _config(mar)["optimization"]
    assert config["precompiled"] == "model.pt2" and config["auto"] is True
    with zipfile.ZipFile(mar) as zf:
        assert {"model.pt2", "model.pt2.json", "model.pt2.reference.pt"} <= set(zf.namelist())

    with ServerProcess(tmp_path / "server.log", "--models", "minilm.mar",
                       model_store=tmp_path) as server:
        server.wait_ready(("minilm",), timeout=600)
        report = server.management.get("/models/minilm").json()[0]["optimization"]["report"]
        answer = server.inference.post("/predictions/minilm", content=b"It is raining.",
                                       headers={"content-type": "text/plain"})
        log = server.log()
    precompiled = next(s for s in report["steps"] if s["name"] == "precompiled")
    assert precompiled["status"] == "applied", report
    assert report["chosen"] and report["why"].startswith(f"chose {report['chosen']} (")
    assert {c["name"] for c in report["candidates"]} >= {"eager", "compile"}
    assert report["cpu_features_source"] == "detected"
    assert "(precompiled package)" in report["ready"]
    assert f"minilm/1.0 ready: {report['ready']}" in log
    assert answer.status_code == 200, answer.text
    embedding = answer.json()
    assert len(embedding) == 384
    assert abs(sum(x * x for x in embedding) - 1.0) < 1e-3

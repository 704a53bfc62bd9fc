"""The optimised default store: warm-up bodies in the archives, and precompiled packages built
on this machine by `auto`, cached by what invalidates them.

A package holds code generated for one torch build, CPU feature set and thread count, and the
weights as constants; its cache key covers all of those plus every source file of the model
(handler, config, weights or the files they are made from, this file and build.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from model_store import package_cache

log = logging.getLogger("model_store.build")

WARMUP = 16  # two batches of 8: two sequence lengths for minilm, 16 images for the guard
SENTENCES = [
    "A man is playing a guitar.", "A woman is slicing an onion in the kitchen.",
    "The stock market fell sharply after the announcement.", "Two dogs run across a field.",
    "The new phone has a larger screen and a faster processor than last year's model.",
    "Children are playing football in the park on a sunny afternoon.", "It is raining.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Please remember to submit your expense report before Friday.",
    "The train to the airport leaves every fifteen minutes from platform four, except on "
    "Sundays, when it runs every half hour and the first one leaves at seven.",
    "He ordered a coffee and sat by the window to read the newspaper.",
    "Quantum computers use qubits that can exist in superpositions of states.",
    "The museum will be closed on Monday for maintenance work.",
    "She won the chess tournament after a long and difficult final game.",
    "Heavy snow blocked the mountain pass for three days.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
]
PACKAGE_FILES = ("model.pt2", "model.pt2.json", "model.pt2.reference.pt")
FAILED = "failed.txt"  # in a cache entry: the package could not be built for this key


def photo_jpegs(count: int, seed: int, widths: tuple[int, int] = (240, 480),
                heights: tuple[int, int] = (220, 400), coarse: tuple[int, int] = (6, 8),
                grain: float = 12.0) -> list[bytes]:
    """JPEG stand-ins for photos, of varied sizes: smooth colour fields (a `coarse` grid of
    random colours, upscaled) with grain, so a handler's decode, resize and crop do real work
    and a model's answers differ between images."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        width, height = int(rng.integers(*widths)), int(rng.integers(*heights))
        colours = rng.integers(0, 256, size=(*coarse, 3), dtype=np.uint8)
        image = Image.fromarray(colours).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.normal(0, grain, size=(height, width, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def resnet50_warmup(work: Path) -> list[Path]:
    """JPEG images of varied sizes, decoded, resized and normalised by the handler as any
    client's image is."""
    paths = []
    for i, body in enumerate(photo_jpegs(WARMUP, seed=15)):
        path = work / f"warmup-{i:02d}.jpg"
        path.write_bytes(body)
        paths.append(path)
    return paths


def minilm_warmup(work: Path) -> list[Path]:
    paths = []
    for i, text in enumerate(SENTENCES[:WARMUP]):
        path = work / f"warmup-{i:02d}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def plain_config(config: Path, work: Path) -> Path:
    """The model-config.yaml without its optimization: block (a `--plain` build)."""
    data = yaml.safe_load(config.read_text()) or {}
    data.pop("optimization", None)
    path = work / "plain" / config.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def serving_threads(name: str, names: Sequence[str]) -> int:
    """The torch threads `serving start --models all` gives `name`'s worker on this machine
    when the store holds `names` (one worker each): placement sizes them all together."""
    from serving.routing.resources import Resources
    from serving.settings import Settings

    placement_log = logging.getLogger("serving.routing.resources")
    level = placement_log.level
    placement_log.setLevel(logging.WARNING)  # its reasons are for the server's log
    try:
        resources = Resources(Settings())
        resources.plan_startup(len(names))
        threads = {}
        for each in sorted(names):
            placement = resources.place(each, 1, resources.default_policy)[0]
            threads[each] = placement.threads
    finally:
        placement_log.setLevel(level)
    return threads[name]


def machine() -> dict[str, Any]:
    """What a package depends on besides the model: torch build, CPU, injected features."""
    import os

    import torch

    from serving.optimize.hardware import (
        cpu_arch,
        detected_cpu_features,
        parse_feature_list,
    )

    injected = parse_feature_list(os.environ.get("SERVING_CPU_FEATURES"))
    return {"torch": torch.__version__, "arch": cpu_arch(),
            "cpu_features": sorted(injected if injected is not None
                                   else detected_cpu_features())}


def pipeline_sources() -> list[Path]:
    """The server code that decides what goes into a package (auto, the steps, export)."""
    import serving.handlers.packaging as packaging
    import serving.optimize as optimize

    folder = Path(optimize.__file__).resolve().parent
    return [*sorted(folder.glob("*.py")), Path(packaging.__file__).resolve()]


def package_key(sources: Sequence[Path], threads: int) -> str:
    digest = hashlib.sha256(json.dumps({**machine(), "threads": threads},
                                       sort_keys=True).encode())
    for path in sorted(sources, key=lambda p: p.name + str(p)):
        digest.update(f"\n{path.name}\n".encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def precompiled_archive(plain: Path, out: Path, cache: Path, key: str, threads: int) -> str:
    """Write `out`: `plain` plus the cached package for `key` (built on a miss) and
    `optimization.precompiled` in its config. Returns "hit" or "miss"."""
    with package_cache.using(cache):  # no pruning while this build reads or writes
        return _precompiled_archive(plain, out, cache, key, threads)


def _precompiled_archive(plain: Path, out: Path, cache: Path, key: str, threads: int) -> str:
    name = plain.stem
    entry = package_cache.entry_path(cache, name, key)
    state = "hit"
    if (entry / "report.json").is_file():
        report = json.loads((entry / "report.json").read_text())
        log.info("%s: precompiled package cache hit (%s): auto chose %s when it was built",
                 name, entry.name, report.get("chosen"))
    elif not (entry / FAILED).is_file():
        state = "miss"
        try:
            _build_package(plain, entry, threads)
        except RuntimeError as exc:  # remembered for this key: no retry on every build
            entry.mkdir(parents=True, exist_ok=True)
            (entry / FAILED).write_text(str(exc))
    package_cache.mark_used(entry)
    if (entry / FAILED).is_file():
        log.warning("%s: no precompiled package for this key (%s): the archive keeps its "
                    "optimization: block and auto runs when a worker starts; why: %s",
                    name, entry.name, (entry / FAILED).read_text()[-1500:])
        partial = out.with_suffix(".partial")
        shutil.copyfile(plain, partial)
        partial.replace(out)
        return f"{state}, package failed"
    _assemble(plain, out, entry)
    return state


def _build_package(plain: Path, entry: Path, threads: int) -> None:
    from serving.handlers.archive_formats import extract_zip
    from serving.handlers.extraction import ArchiveLimits
    from serving.handlers.packaging import _precompile_in_child

    log.info("%s: no precompiled package for this machine yet (torch, CPU features, %d "
             "threads, archive content): running auto's candidates and the AOT compile, "
             "which takes minutes once", plain.stem, threads)
    started = time.perf_counter()
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{package_cache.STAGING_PREFIX}{plain.stem}-",
                                     dir=entry.parent) as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        extract_zip(plain, model_dir, ArchiveLimits())
        report = _precompile_in_child(
            model_dir, threads, on_line=lambda line: log.info("%s:   %s", plain.stem, line))
        staged = Path(tmp) / "entry"
        staged.mkdir()
        for file in PACKAGE_FILES:
            shutil.copy2(model_dir / file, staged / file)
        (staged / "report.json").write_text(json.dumps(report, indent=2))
        shutil.rmtree(entry, ignore_errors=True)
        staged.rename(entry)  # complete or absent: an interrupted build leaves no entry
    log.info("%s: package built and cached in %.0f s: %s", plain.stem,
             time.perf_counter() - started, report.get("why") or report.get("applied"))


def _assemble(plain: Path, out: Path, entry: Path) -> None:
    """`plain`'s entries, the package files, and the config pointing at the package."""
    partial = out.with_suffix(".partial")
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as dst:
        manifest = json.loads(src.read("MAR-INF/MANIFEST.json"))
        config_name = manifest["model"]["configFile"]
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == config_name:
                config = yaml.safe_load(data) or {}
                config.setdefault("optimization", {})["precompiled"] = PACKAGE_FILES[0]
                data = yaml.safe_dump(config, sort_keys=False).encode()
            dst.writestr(info, data)
        for file in PACKAGE_FILES:
            dst.write(entry / file, file)
    partial.replace(out)

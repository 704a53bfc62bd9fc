"""Compile caches keyed so that workers of other torch builds, CPUs or thread counts never share."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from serving.optimize.hardware import cpu_arch, cpu_features


def cache_key(threads: int) -> str:
    """Readable where it can be, hashed where the feature list would make it long."""
    features = ",".join(sorted(cpu_features()))
    digest = hashlib.sha256(f"{cpu_arch()}|{features}".encode()).hexdigest()[:12]
    version = torch.__version__.replace("+", "_")
    return f"torch-{version}-{cpu_arch()}-{digest}-t{threads}"


def cache_dir(base: Path | str, threads: int) -> Path:
    """The compile cache for this torch version, CPU feature set and thread count.

    Inductor's CPU kernels bake in the thread count and the ISA, so a directory shared by
    workers of different sizes would hand one of them kernels built for the other.
    """
    path = Path(base) / cache_key(threads)
    path.mkdir(parents=True, exist_ok=True)
    stamp = path / "key.json"
    if not stamp.exists():
        stamp.write_text(
            json.dumps(
                {
                    "torch": torch.__version__,
                    "arch": cpu_arch(),
                    "cpu_features": sorted(cpu_features()),
                    "threads": threads,
                },
                indent=2,
            )
        )
    return path


def configure_compile_env(cache: Path | None = None, compile_threads: int | None = None) -> None:
    """Point Inductor's caches at `cache` and bound its compile pool, before the first compile.

    Both live in the environment because Inductor reads them there (and its compile
    subprocesses inherit them); call this once in the worker, never from a request.
    """
    import torch._inductor.config as inductor_config

    if cache is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
        inductor_config.fx_graph_cache = True
    if compile_threads is not None:
        # In a pinned worker a pool of compile subprocesses would fight the worker for its cores.
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(compile_threads)
        inductor_config.compile_threads = compile_threads

"""CPU feature detection and the compile-cache key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from serving.optimize.cache import cache_dir, configure_compile_env
from serving.optimize.hardware import cpu_features, parse_cpu_flags, resolve_device


def test_only_relevant_flags_are_kept() -> None:
    text = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_int8 ht\n"
    assert parse_cpu_flags(text) == {"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"}
    arm = "Features\t: fp asimd sve i8mm bf16 crc32\n"
    assert parse_cpu_flags(arm) == {"asimd", "sve", "i8mm", "bf16"}


def test_this_cpu_reports_its_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text()
    assert cpu_features() == parse_cpu_flags(flags)


def test_cache_dirs_differ_by_threads_and_record_their_key(tmp_path: Path) -> None:
    one, two = cache_dir(tmp_path, 1), cache_dir(tmp_path, 2)
    assert one != two and one.is_dir() and two.is_dir()
    assert one == cache_dir(tmp_path, 1)
    assert torch.__version__ in (one / "key.json").read_text()


def test_configure_compile_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor_config

    # setenv first so that monkeypatch puts the real values back afterwards.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", "-"))
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "2")
    # Inductor's own patch puts its settings back: monkeypatch.setattr on its config module
    # deletes them on undo, and every later compile in the process then fails.
    with inductor_config.patch(compile_threads=inductor_config.compile_threads,
                               fx_graph_cache=inductor_config.fx_graph_cache):
        configure_compile_env(tmp_path / "cache", compile_threads=1)
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
        assert os.environ["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
        assert inductor_config.compile_threads == 1 and inductor_config.fx_graph_cache is True


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto", "cpu") == torch.device("cpu")
    if not torch.accelerator.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="not available"):
            resolve_device("cuda")

"""The CPU instruction-set flags that change what this server builds or chooses (no torch)."""

from __future__ import annotations

# The flags that change what Inductor's C++ code generator emits (ISA of the vector and GEMM
# micro-kernels); packages and caches built with one set are not interchangeable with another.
RELEVANT_CPU_FLAGS = frozenset(
    {
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "avx_vnni",  # 256-bit VNNI (Alder Lake and later client CPUs)
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "amx_fp16",
        # aarch64 equivalents, read from the "Features" line
        "asimd",
        "sve",
        "sve2",
        "bf16",
        "i8mm",
    }
)

"""Facts about the machine a benchmark runs on, and CPU pinning of the current process."""

from __future__ import annotations

import contextlib
import os
import platform
from datetime import datetime
from importlib import metadata
from pathlib import Path

_PACKAGES = ("torch", "torchserve", "torch-model-archiver", "aiohttp", "fastapi", "uvicorn")
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


def parse_cpus(spec: str) -> set[int]:
    """CPU list in taskset's syntax: "1", "0,2", "0-3"."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def pin_process(cpus: set[int]) -> None:
    """Pin every thread of this process, as `taskset -c` would at exec time."""
    # sched_setaffinity(0) moves only the calling thread; threads already started (torch's
    # OpenMP pool, the resolver's executor) would keep running on the other cores.
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            break  # first processor only: the box is homogeneous
        info.setdefault(key.strip(), value.strip())
    return info


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def facts() -> dict[str, str]:
    """What a reader needs to judge figures from another box: CPU, cores, versions, date."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    out = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu.get("model name", platform.processor() or "unknown"),
        "cpu family/model": f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}",
        "cpu flags of note": " ".join(f for f in _CPU_FLAGS if f in flags) or "none",
        "logical cpus": str(os.cpu_count()),
        "cpus of this process": ",".join(map(str, sorted(os.sched_getaffinity(0)))),
        "memory": _mem_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    out.update({name: _version(name) for name in _PACKAGES})
    return out

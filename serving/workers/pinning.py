"""Applies a worker's placement inside the freshly spawned worker process, before torch loads."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MPOL_BIND = 2  # <linux/mempolicy.h>
PLACEMENT_ENV = "SERVING_PLACEMENT"  # the placement, as JSON, in a spawned worker's env

# Preferred first: full tcmalloc before the minimal build (same allocator, fewer extras).
ALLOCATOR_FILES = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "tcmalloc": ("libtcmalloc.so.4", "libtcmalloc_minimal.so.4", "libtcmalloc.so"),
}


@dataclass(frozen=True, slots=True)
class WorkerPlacement:
    """What one worker process is given; applied in the child before torch is imported."""

    cpus: tuple[int, ...]
    node: int | None
    threads: int
    interop_threads: int = 1
    bind_memory: bool = False
    allocator: str | None = None
    flush_denormal: bool = True
    shared: bool = False
    reason: str | None = None  # why the plan is not the one asked for; the caller logs it

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpus": list(self.cpus), "cpulist": format_cpulist(self.cpus)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerPlacement:
        fields = {k: v for k, v in data.items() if k != "cpulist"}
        return cls(**{**fields, "cpus": tuple(fields["cpus"])})


def format_cpulist(cpus: Iterable[int]) -> str:
    """The inverse of `parse_cpulist`, for log lines a person compares with `lscpu`."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def library_dirs() -> list[Path]:
    """Where Debian/Ubuntu (multiarch), RPM distributions and conda/venv prefixes put libraries."""
    arch = platform.machine()
    return [Path(f"/usr/lib/{arch}-linux-gnu"), Path(f"/lib/{arch}-linux-gnu"),
            Path("/usr/lib64"), Path("/usr/lib"), Path("/usr/local/lib"), Path(sys.prefix, "lib")]


def find_allocator(name: str, search_dirs: Sequence[Path] | None = None,
                   ldconfig: bool = True) -> str | None:
    """The path of the `jemalloc` or `tcmalloc` shared library, None if not installed.

    Blocks (file checks, maybe `ldconfig -p`): the server calls `find_allocators` once, off
    its event loop, and looks the answers up from then on."""
    if name == "default":
        return None
    if name not in ALLOCATOR_FILES:
        raise ValueError(f"unknown allocator {name!r}; choose one of {sorted(ALLOCATOR_FILES)}")
    dirs = library_dirs() if search_dirs is None else search_dirs
    for filename in ALLOCATOR_FILES[name]:
        for folder in dirs:
            if (folder / filename).is_file():
                return str(folder / filename)
    return _ldconfig_lookup(ALLOCATOR_FILES[name], _ldconfig_listing()) if ldconfig else None


def find_allocators() -> dict[str, str | None]:
    """Every known allocator's library (None: not installed), with `ldconfig -p` run at most
    once for all of them."""
    found = {name: find_allocator(name, ldconfig=False) for name in ALLOCATOR_FILES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        listing = _ldconfig_listing()
        found.update({name: _ldconfig_lookup(ALLOCATOR_FILES[name], listing)
                      for name in missing})
    return found


def _ldconfig_listing() -> str:
    exe = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None)
    if exe is None:
        return ""
    try:
        return subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _ldconfig_lookup(filenames: Sequence[str], listing: str) -> str | None:
    found: dict[str, str] = {}
    for line in listing.splitlines():  # "\tlibjemalloc.so.2 (libc6,x86-64) => /usr/lib/..."
        soname, _, path = line.strip().partition(" => ")
        found.setdefault(soname.split(" (")[0], path)
    return next((found[f] for f in filenames if f in found), None)


def env_for(placement: WorkerPlacement) -> dict[str, str]:
    """Variables for the spawn's environment: OpenMP/MKL read them, and the dynamic loader reads
    LD_PRELOAD, only when the process starts, so setting them later in the child is too late."""
    threads = str(placement.threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if placement.allocator:
        env["LD_PRELOAD"] = placement.allocator
    return env


def spawn_env(inherited: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: what the server inherited, with `extra` on top, except that an
    `LD_PRELOAD` in `extra` (the allocator) goes in front of the inherited one instead of
    replacing it (a profiler or sanitizer preloaded by the operator stays loaded)."""
    env = {**inherited, **extra}
    mine, theirs = extra.get("LD_PRELOAD"), inherited.get("LD_PRELOAD")
    if mine and theirs:
        kept = [lib for lib in theirs.replace(":", " ").split() if lib != mine]
        env["LD_PRELOAD"] = " ".join([mine, *kept])
    return env


def apply(placement: WorkerPlacement, libnuma: str = "libnuma.so.1") -> list[str]:
    """Pin this process to its CPUs and memory node; call before importing torch. Returns log
    lines for the caller to log."""
    os.environ.update({k: v for k, v in env_for(placement).items() if k != "LD_PRELOAD"})
    cpus = set(placement.cpus)
    _set_affinity(cpus)
    lines = [f"cpu affinity: {','.join(map(str, sorted(cpus)))} ({placement.threads} threads)"]
    if placement.node is not None and placement.bind_memory:
        lines.append(_bind_memory(placement.node, libnuma))
    if placement.allocator:
        lines.append(_allocator_state(placement.allocator))
    return lines


def _set_affinity(cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(0, cpus)
        # Affinity is per thread; a thread started before us (a logging or IPC helper) would
        # otherwise keep running anywhere.
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # the thread has ended
                os.sched_setaffinity(int(tid), cpus)
    except OSError as exc:
        allowed = sorted(os.sched_getaffinity(0))
        raise OSError(exc.errno, f"cannot pin to CPUs {sorted(cpus)} (this process may use "
                                 f"{allowed}): {exc.strerror}") from exc


def _bind_memory(node: int, libnuma: str) -> str:
    degraded = f"CPU affinity only; memory is not bound to NUMA node {node}"
    try:
        lib = ctypes.CDLL(libnuma, use_errno=True)
    except OSError as exc:
        return f"memory: {libnuma} cannot be loaded ({exc}); {degraded}"
    if lib.numa_available() < 0:
        return f"memory: the kernel offers no NUMA support here; {degraded}"
    lib.numa_parse_nodestring.argtypes = [ctypes.c_char_p]
    lib.numa_parse_nodestring.restype = ctypes.c_void_p
    lib.numa_set_membind.argtypes = [ctypes.c_void_p]
    lib.numa_bitmask_free.argtypes = [ctypes.c_void_p]
    mask = lib.numa_parse_nodestring(str(node).encode())
    if not mask:
        return f"memory: libnuma does not know node {node}; {degraded}"
    # Strict binding, as `numactl --membind` under TorchServe's launcher: a worker that outgrows
    # its node fails visibly instead of running on remote memory at half the bandwidth.
    ctypes.set_errno(0)
    lib.numa_set_membind(mask)
    err = ctypes.get_errno()
    lib.numa_bitmask_free(mask)
    # libnuma only prints its errors, so ask the kernel which policy the thread now has.
    mode = ctypes.c_int(-1)
    lib.get_mempolicy(ctypes.byref(mode), None, ctypes.c_ulong(0), None, ctypes.c_uint(0))
    if mode.value & 0xFF != MPOL_BIND:  # e.g. a seccomp profile refusing set_mempolicy
        return f"memory: set_mempolicy refused ({os.strerror(err) if err else 'not applied'}); " \
               f"{degraded}"
    return f"memory: bound to NUMA node {node}"


def _allocator_state(path: str) -> str:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    if os.path.realpath(path) in maps or path in maps:
        return f"allocator: {path} preloaded"
    return f"allocator: {path} is not loaded; start the worker with env_for(placement)"


def apply_torch_threads(placement: WorkerPlacement) -> list[str]:
    """Set torch's thread pools and denormal handling; imports torch, so call after `apply`."""
    import torch

    lines: list[str] = []
    torch.set_num_threads(placement.threads)
    try:
        torch.set_num_interop_threads(placement.interop_threads)
    except RuntimeError:  # allowed once, before any inter-op work; a second call raises
        lines.append(f"torch: inter-op threads were already fixed at "
                     f"{torch.get_num_interop_threads()}")
    if placement.flush_denormal and not torch.set_flush_denormal(True):
        lines.append("torch: this CPU cannot flush denormals (no SSE3)")
    lines.append(f"torch: {torch.get_num_threads()} intra-op, "
                 f"{torch.get_num_interop_threads()} inter-op threads")
    return lines

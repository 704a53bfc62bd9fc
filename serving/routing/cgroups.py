"""The container's limits as the kernel enforces them: cgroup v1 or v2 CPU quota, cpuset and
memory limit, read from the cgroup filesystem under a root path (tests use fake trees)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from serving.routing.topology import parse_cpulist

# cgroup v1 reports "no memory limit" as a huge number (the page-rounded LONG_MAX).
_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupLimits:
    """What this process's cgroup allows; None where there is no limit (or no cgroup)."""

    version: int | None = None  # 1, 2, or None when no cgroup filesystem was found
    cpu_quota: float | None = None  # CPUs' worth of time per period (cpu.max, cfs_quota_us)
    cpuset: tuple[int, ...] | None = None  # cpuset.cpus.effective (v2), cpuset.cpus (v1)
    memory_max: int | None = None  # bytes (memory.max, memory.limit_in_bytes)
    memory_dir: Path | None = None  # where memory.current / usage_in_bytes is read

    @property
    def cpu_limit(self) -> int | None:
        """Whole CPUs the quota pays for (at least 1): more threads than this only queue."""
        return max(1, math.floor(self.cpu_quota + 1e-9)) if self.cpu_quota else None

    def summary(self) -> str:
        parts = [f"cgroup v{self.version}" if self.version else "no cgroup limits found"]
        if self.cpu_quota is not None:
            parts.append(f"CPU quota {self.cpu_quota:g} CPUs")
        if self.cpuset is not None:
            parts.append(f"cpuset {len(self.cpuset)} CPUs")
        if self.memory_max is not None:
            parts.append(f"memory limit {self.memory_max / 2**20:.0f} MiB")
        return ", ".join(parts)


def read_cgroup_limits(root: Path = Path("/")) -> CgroupLimits:
    """Limits of the cgroup `root/proc/self/cgroup` names, read under `root/sys/fs/cgroup`.

    In a container with its own cgroup namespace the path is `/` and the files sit at the
    mount's top; without one the host path may not exist inside the container, and the mount's
    top is again the container's own cgroup. Limits of the parent cgroups count too: the
    tightest one along the path is the one the kernel enforces.
    """
    mount = root / "sys/fs/cgroup"
    paths = _proc_cgroup(root / "proc/self/cgroup")
    if "" in paths and (mount / "cgroup.controllers").exists():
        return _read_v2(_levels(mount, paths[""]))
    if any(paths):
        return _read_v1(mount, paths)
    return CgroupLimits()


def memory_in_use(limits: CgroupLimits) -> int | None:
    """Bytes the cgroup uses now, less the inactive file cache the kernel reclaims first (the
    "working set" the kubelet compares with the limit)."""
    folder = limits.memory_dir
    if folder is None:
        return None
    if limits.version == 2:
        used = _read_int(folder / "memory.current")
        inactive = _stat(folder / "memory.stat", "inactive_file")
    else:
        used = _read_int(folder / "memory.usage_in_bytes")
        inactive = _stat(folder / "memory.stat", "total_inactive_file")
    if used is None:
        return None
    return max(0, used - (inactive or 0))


def _proc_cgroup(path: Path) -> dict[str, str]:
    """{controllers: path} from /proc/self/cgroup lines `id:controllers:path` (v2: `0::/p`)."""
    found: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return found
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3:
            found[parts[1]] = parts[2]
    return found


def _levels(top: Path, cgroup_path: str) -> list[Path]:
    """The folders from `top` down to the cgroup's own, the deepest last; only the top when
    the cgroup's path does not exist below it (no cgroup namespace)."""
    levels = [top]
    here = top
    for part in (p for p in cgroup_path.split("/") if p):
        here = here / part
        levels.append(here)
    return levels if here.is_dir() else [top]


def _read_v2(levels: list[Path]) -> CgroupLimits:
    quotas = [q for q in (_cpu_max(d / "cpu.max") for d in levels) if q is not None]
    memories = [m for m in (_read_limit(d / "memory.max") for d in levels) if m is not None]
    cpuset = None
    for folder in reversed(levels):  # the deepest one that says
        text = _read_text(folder / "cpuset.cpus.effective")
        if text:
            cpuset = parse_cpulist(text)
            break
    return CgroupLimits(version=2, cpu_quota=min(quotas, default=None), cpuset=cpuset,
                        memory_max=min(memories, default=None), memory_dir=levels[-1])


def _read_v1(mount: Path, paths: dict[str, str]) -> CgroupLimits:
    def levels_of(controller: str) -> list[Path]:
        for controllers, cgroup_path in paths.items():
            names = controllers.split(",")
            if controller in names:
                for folder in (mount / controllers, mount / controller):
                    if folder.is_dir():
                        return _levels(folder, cgroup_path)
        return []

    quotas = [q for q in (_cfs_quota(d) for d in levels_of("cpu")) if q is not None]
    memory_levels = levels_of("memory")
    memories = [m for m in (_read_limit(d / "memory.limit_in_bytes") for d in memory_levels)
                if m is not None and m < _V1_UNLIMITED]
    cpuset = None
    for folder in reversed(levels_of("cpuset")):
        text = _read_text(folder / "cpuset.effective_cpus") or _read_text(folder / "cpuset.cpus")
        if text:
            cpuset = parse_cpulist(text)
            break
    return CgroupLimits(version=1, cpu_quota=min(quotas, default=None), cpuset=cpuset,
                        memory_max=min(memories, default=None),
                        memory_dir=memory_levels[-1] if memory_levels else None)


def _cpu_max(path: Path) -> float | None:
    """v2 `cpu.max`: "max 100000" (no quota) or "<quota> <period>" in microseconds."""
    fields = _read_text(path).split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 100_000
    return int(fields[0]) / period if fields[0].isdigit() and period else None


def _cfs_quota(folder: Path) -> float | None:
    quota = _read_int(folder / "cpu.cfs_quota_us")
    period = _read_int(folder / "cpu.cfs_period_us")
    if quota is None or quota <= 0 or not period:
        return None  # -1: no quota
    return quota / period


def _read_limit(path: Path) -> int | None:
    text = _read_text(path)
    return int(text) if text.isdigit() else None  # "max", missing: no limit


def _stat(path: Path, key: str) -> int | None:
    for line in _read_text(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    return int(text) if text.lstrip("-").isdigit() else None


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""

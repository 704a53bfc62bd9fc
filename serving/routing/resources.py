"""What workers are given: cores and memory nodes (placement) and accelerator devices."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from serving.errors import ArchiveError, ConfigError, InsufficientStorage
from serving.routing.cgroups import CgroupLimits, memory_in_use, read_cgroup_limits
from serving.routing.placement import CoreAllocator, PlacementPolicy, parse_launcher_args
from serving.routing.topology import Topology, read_topology, within_cpu_limit
from serving.settings import Settings, format_validation_error
from serving.workers.pinning import WorkerPlacement, find_allocators

log = logging.getLogger(__name__)

ACCELERATOR_PROBE = (
    "import torch\n"
    "a = torch.accelerator\n"
    "ok = a.is_available()\n"
    "kind = a.current_accelerator().type if ok else ''\n"
    "n = a.device_count() if ok else 0\n"
    "print(kind, n)\n"
    # Each device's PCI address where torch tells it (CUDA), to find its NUMA node.
    "for i in range(n if kind == 'cuda' else 0):\n"
    "    p = torch.cuda.get_device_properties(i)\n"
    "    bus = getattr(p, 'pci_bus_id', None)\n"
    "    if bus is not None:\n"
    "        print(f\"{getattr(p, 'pci_domain_id', 0):04x}:{bus:02x}:\"\n"
    "              f\"{getattr(p, 'pci_device_id', 0):02x}.0\")\n"
    "    else:\n"
    "        print('-')\n"
)


@dataclass(frozen=True)
class Accelerators:
    """The accelerator type torch sees on this machine (`cuda`, `xpu`) and how many."""

    kind: str | None
    count: int
    nodes: tuple[int | None, ...] = ()  # each device's NUMA node, where known

    def node_of(self, index: int) -> int | None:
        return self.nodes[index] if index < len(self.nodes) else None

    @classmethod
    def probe(cls) -> Accelerators:
        # Only ask torch (in a child: the gateway never imports it) when a device node hints
        # at one; a CPU-only machine answers at once.
        if not (Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists()
                or any(Path("/dev/dri").glob("renderD*"))):
            return cls(None, 0)
        try:
            out = subprocess.run([sys.executable, "-c", ACCELERATOR_PROBE], capture_output=True,
                                 text=True, timeout=120, check=True).stdout.split()
        except (subprocess.SubprocessError, OSError) as e:
            log.warning("could not ask torch about accelerators (%s); serving on CPU", e)
            return cls(None, 0)
        if len(out) < 2 or not out[1].isdigit():
            return cls(None, 0)
        kind, count = out[0], int(out[1])
        return cls(kind or None, count, pci_numa_nodes(out[2:2 + count]))


def pci_numa_nodes(addresses: list[str], sysfs: Path = Path("/sys")
                   ) -> tuple[int | None, ...]:
    """The NUMA node of each PCI device ("0000:3b:00.0"; "-": unknown) from sysfs; None where
    the kernel does not say (-1: a single-node machine, or firmware that does not tell)."""
    nodes: list[int | None] = []
    for address in addresses:
        try:
            node = int((sysfs / "bus/pci/devices" / address.lower() / "numa_node")
                       .read_text().strip())
        except (OSError, ValueError):
            node = -1
        nodes.append(node if node >= 0 else None)
    return tuple(nodes)


@dataclass(frozen=True)
class DeviceAssignment:
    """One worker's device: what the handler sees as `gpu_id`, and env to restrict it."""

    kind: str  # "cpu", "cuda", "xpu"
    index: int | None
    gpu_id: int | None
    env: dict[str, str]

    def describe(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


# Workers are refused past this share of the memory limit: the rest is for the gateway, page
# cache and a worker's peak above its resting RSS, so the OOM killer is not the one to decide.
MEMORY_HEADROOM = 0.9

VISIBILITY_ENV = {"cuda": "CUDA_VISIBLE_DEVICES", "xpu": "ZE_AFFINITY_MASK"}


class Resources:
    """Server-wide: the core allocator shared by all models, and the accelerators."""

    def __init__(self, settings: Settings, topology: Topology | None = None,
                 accelerators: Accelerators | None = None,
                 cgroup: CgroupLimits | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        # What the server itself was restricted to (CUDA_VISIBLE_DEVICES, ZE_AFFINITY_MASK):
        # torch numbers only those devices, so an isolated worker must be given their names.
        env = os.environ if environ is None else environ
        self._inherited = {kind: [d.strip() for d in env[name].split(",") if d.strip()]
                           for kind, name in VISIBILITY_ENV.items() if env.get(name)}
        # A topology given (tests, fake sysfs trees) comes with its own limits, or none.
        self.cgroup = cgroup or (read_cgroup_limits(settings.cgroup_root) if topology is None
                                 else CgroupLimits())
        if topology is None:
            affinity = set(os.sched_getaffinity(0))
            # The cpuset is in the affinity already, unless the cgroup was read elsewhere.
            allowed = affinity & set(self.cgroup.cpuset or affinity) or affinity
            topology = read_topology(allowed=allowed)
        self.topology = within_cpu_limit(topology, self.cgroup.cpu_limit)
        if self.topology is not topology:
            log.info("the cgroup's CPU quota (%g CPUs) is below the %d CPUs online: workers "
                     "are placed on %d physical core(s), one thread each", self.cgroup.cpu_quota,
                     len(topology.cpus), len(self.topology.cpus))
        # Looked up once, here (the server builds Resources off its event loop): allocate()
        # runs on the loop and must not stat library folders or run `ldconfig -p`.
        libraries = find_allocators()
        self.allocator = CoreAllocator(self.topology, settings.reserved_gateway_cores,
                                       find_library=libraries.get)
        self.accelerators = accelerators or Accelerators.probe()
        if settings.number_of_gpu is not None:
            self.accelerators = Accelerators(self.accelerators.kind,
                                             min(settings.number_of_gpu, self.accelerators.count))
        self.default_policy, self.launcher_instances = _server_policy(
            settings, self.topology, self.allocator.worker_core_count)
        self._auto_policy_override: dict[str, Any] = {}
        self._next_device = 0
        self._slot_devices: dict[tuple[str, int], int] = {}  # a slot keeps its device

    def plan_startup(self, total_workers: int) -> None:
        """Size `auto` placements for the models loaded at start, which are known together:
        each worker gets an equal share of the free physical cores, no worker split across
        NUMA nodes (the allocator's own rule, applied to all of them at once), or none are
        pinned when they do not all fit (a person would not pin 3 workers to 2 cores either)."""
        if not total_workers:
            return
        size = self.allocator.startup_size(total_workers)
        self._auto_policy_override = ({"cores_per_worker": size} if size
                                      else {"enabled": False})

    def startup_done(self) -> None:
        self._auto_policy_override = {}

    def policy_for(self, model_yaml: dict[str, Any], device_type: str | None = "cpu",
                   device_ids: tuple[int, ...] | None = None) -> PlacementPolicy:
        """The server policy with the archive's `placement:` block on top. Workers of a
        model on accelerators go to the NUMA node(s) of the devices it uses, unless the block
        names nodes itself."""
        block = model_yaml.get("placement") or {}
        if not isinstance(block, dict):
            raise ArchiveError("model-config.yaml: placement must be a mapping")
        base = self.default_policy.model_dump()
        if base["nodes"] is None:
            base["nodes"] = self._device_nodes(device_type, device_ids)
        if block.get("cores_per_worker", base["cores_per_worker"]) == "auto" and \
                block.get("enabled", base["enabled"]) == "auto":
            base.update(self._auto_policy_override)
        try:
            return PlacementPolicy.model_validate({**base, **block})
        except ValidationError as e:
            raise ArchiveError(f"model-config.yaml placement: {format_validation_error(e)}"
                               ) from None

    def _device_nodes(self, device_type: str | None,
                      device_ids: tuple[int, ...] | None) -> list[int] | None:
        acc = self.accelerators
        if (device_type or "auto").lower() == "cpu" or not acc.kind or not acc.count:
            return None
        ids = device_ids or tuple(range(acc.count))
        nodes = {acc.node_of(i) for i in ids}
        if None in nodes or not nodes <= set(self.topology.node_ids):
            return None  # unknown, or not among the nodes this process may use
        return sorted(n for n in nodes if n is not None)

    def place(self, owner: str, n: int, policy: PlacementPolicy) -> list[WorkerPlacement]:
        try:
            placements = self.allocator.allocate(owner, n, policy)
        except ValueError as e:
            from serving.errors import ServiceUnavailable

            raise ServiceUnavailable(str(e)) from None
        reasons = {p.reason for p in placements if p.reason}
        for reason in reasons:
            log.info("placement: %s", reason)
        return placements

    def check_memory(self, owner: str, n: int, per_worker: int | None) -> None:
        """Refuse `n` more workers of `owner` that would not fit under the cgroup's memory
        limit, judged by what one of its running workers holds (`per_worker` bytes of RSS;
        None for a model with no worker yet: nothing to judge by)."""
        limit = self.cgroup.memory_max
        if limit is None or not per_worker:
            return
        used = memory_in_use(self.cgroup)
        if used is None:
            return
        needed = n * per_worker
        room = int(limit * MEMORY_HEADROOM) - used
        if needed > room:
            raise InsufficientStorage(
                f"{owner}: {n} more worker(s) need about {needed / 2**20:.0f} MiB (one worker "
                f"holds {per_worker / 2**20:.0f} MiB); the container's memory limit of "
                f"{limit / 2**20:.0f} MiB leaves {max(room, 0) / 2**20:.0f} MiB "
                f"({MEMORY_HEADROOM:.0%} of the limit, {used / 2**20:.0f} MiB in use)")

    def release(self, placement: WorkerPlacement) -> None:
        self.allocator.release(placement)

    def device_for(self, device_type: str | None, device_ids: tuple[int, ...] | None,
                   slot: int, isolate: bool, owner: str = "") -> DeviceAssignment:
        """Round-robin over the accelerators (or over `deviceIds`), as TorchServe assigns
        `gpu_id`; `cpu`, or no accelerator, gives the CPU. A worker slot of `owner` keeps the
        device it was first given, so a restarted worker comes back on the same one."""
        acc = self.accelerators
        wanted = (device_type or "auto").lower()
        if wanted == "cpu" or not acc.kind or acc.count == 0:
            if wanted in ("cuda", "xpu", "gpu"):
                raise ArchiveError(f"deviceType {wanted} asked, but torch sees no accelerator "
                                   "on this machine")
            return DeviceAssignment("cpu", None, None, {})
        if wanted not in ("auto", "gpu", acc.kind):
            raise ArchiveError(f"deviceType {wanted} asked, but this machine has {acc.kind}")
        if device_ids:
            index = device_ids[slot % len(device_ids)]
        elif (owner, slot) in self._slot_devices:
            index = self._slot_devices[owner, slot]
        else:
            index = self._slot_devices[owner, slot] = self._next_device % acc.count
            self._next_device += 1
        if index >= acc.count:
            raise ArchiveError(f"deviceIds names {acc.kind}:{index}; this machine has "
                               f"{acc.count}")
        if isolate:
            inherited = self._inherited.get(acc.kind, [])
            name = inherited[index] if index < len(inherited) else str(index)
            return DeviceAssignment(acc.kind, index, 0, {VISIBILITY_ENV[acc.kind]: name})
        return DeviceAssignment(acc.kind, index, index, {})


def _server_policy(settings: Settings, topology: Topology,
                   worker_cores: int) -> tuple[PlacementPolicy, int | None]:
    """TorchServe's `cpu_launcher_enable`/`cpu_launcher_args` map onto the same placement;
    `worker_cores` is how many physical cores workers may use (the gateway's left out)."""
    if not settings.cpu_launcher_enable:
        return PlacementPolicy(), None
    try:
        parsed = parse_launcher_args(settings.cpu_launcher_args, topology.threads_per_core,
                                     nodes=len(topology.node_ids), physical_cores=worker_cores)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if parsed.ignored:
        log.info("cpu_launcher_args: %s accepted with no effect here", " ".join(parsed.ignored))
    return parsed.policy.model_copy(update={"enabled": True}), parsed.instances

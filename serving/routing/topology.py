"""The machine's CPU topology (NUMA nodes, physical cores, hyper-threads) read from sysfs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from serving.workers.pinning import format_cpulist  # re-exported: where it is used

CoreKey = tuple[int, int]  # (package, core id): core ids repeat on every package


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse the kernel's cpulist syntax ("0-3,8-11,14", also "0-15:2" strides) to sorted ids."""
    ids: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        span, _, stride = part.partition(":")
        first, _, last = span.partition("-")
        try:
            start, end, step = int(first), int(last or first), int(stride or 1)
        except ValueError:
            raise ValueError(f"{text.strip()!r} is not a cpulist") from None
        if end < start or step < 1:
            raise ValueError(f"{text.strip()!r} is not a cpulist")
        ids.update(range(start, end + 1, step))
    return tuple(sorted(ids))


@dataclass(frozen=True, slots=True)
class Cpu:
    """One logical CPU (a hardware thread)."""

    id: int
    package: int
    core: CoreKey
    node: int


@dataclass(frozen=True)
class Topology:
    """Online CPUs and the NUMA nodes that hold them; nodes without CPUs are left out."""

    cpus: tuple[Cpu, ...]
    nodes: dict[int, tuple[int, ...]] = field(hash=False)

    def cpu(self, cpu_id: int) -> Cpu:
        for cpu in self.cpus:
            if cpu.id == cpu_id:
                return cpu
        raise KeyError(f"CPU {cpu_id} is not online here")

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.nodes))

    def physical_cores(self, node: int | None = None) -> tuple[tuple[int, ...], ...]:
        """Each physical core as the sorted ids of its threads, ordered by its first thread."""
        groups: dict[CoreKey, list[int]] = defaultdict(list)
        for cpu in self.cpus:
            if node is None or cpu.node == node:
                groups[cpu.core].append(cpu.id)
        return tuple(sorted(tuple(sorted(ids)) for ids in groups.values()))

    def siblings(self, cpu_id: int) -> tuple[int, ...]:
        """The threads sharing `cpu_id`'s physical core, itself included."""
        key = self.cpu(cpu_id).core
        return tuple(cpu.id for cpu in self.cpus if cpu.core == key)

    @property
    def threads_per_core(self) -> int:
        return max((len(core) for core in self.physical_cores()), default=1)

    def summary(self) -> str:
        nodes = "; ".join(f"node {n}: {format_cpulist(ids)}" for n, ids in self.nodes.items())
        return (f"{len(self.nodes)} NUMA node(s), {len(self.physical_cores())} physical cores, "
                f"{len(self.cpus)} CPUs ({nodes})")


def read_topology(sysfs: Path = Path("/sys"), allowed: Collection[int] | None = None) -> Topology:
    """Read the topology under `sysfs`; `allowed` (e.g. `os.sched_getaffinity(0)`) keeps only
    the CPUs this process may use, as in a container restricted by a cpuset."""
    cpu_dir = sysfs / "devices/system/cpu"
    online = _online_cpus(cpu_dir)
    if allowed is not None:
        online = tuple(cpu for cpu in online if cpu in allowed)
    if not online:
        raise ValueError(f"no usable CPU found under {cpu_dir}")
    node_of = _node_of(sysfs / "devices/system/node", online)
    package: dict[int, int] = {}
    core_id: dict[int, int] = {}
    siblings: dict[int, frozenset[int]] = {}
    for cpu in online:
        topo = cpu_dir / f"cpu{cpu}/topology"
        package[cpu] = _read_int(topo / "physical_package_id", 0)
        core_id[cpu] = _read_int(topo / "core_id", cpu)
        listed = _read_text(topo / "thread_siblings_list")
        siblings[cpu] = frozenset(parse_cpulist(listed) if listed else (cpu,)) & set(online)
    keys = _core_keys(online, package, core_id, siblings)
    cpus = tuple(Cpu(id=c, package=package[c], core=keys[c], node=node_of[c]) for c in online)
    nodes: dict[int, list[int]] = defaultdict(list)
    for c in cpus:
        nodes[c.node].append(c.id)
    return Topology(cpus=cpus, nodes={n: tuple(ids) for n, ids in sorted(nodes.items())})


def _core_keys(online: tuple[int, ...], package: dict[int, int], core_id: dict[int, int],
               siblings: dict[int, frozenset[int]]) -> dict[int, CoreKey]:
    keys = {cpu: (package[cpu], core_id[cpu]) for cpu in online}
    members: dict[CoreKey, set[int]] = defaultdict(set)
    for cpu, key in keys.items():
        members[key].add(cpu)
    if all(members[keys[cpu]] == siblings[cpu] for cpu in online):
        return keys
    # Some hypervisors and arm64 firmware report core_id -1 or repeat it; the sibling lists
    # are what the scheduler itself trusts, so they decide which threads share a core.
    return {cpu: (package[cpu], min(siblings[cpu])) for cpu in online}


def _online_cpus(cpu_dir: Path) -> tuple[int, ...]:
    text = _read_text(cpu_dir / "online")
    if text:
        return parse_cpulist(text)
    found = (p.name[3:] for p in cpu_dir.glob("cpu[0-9]*"))
    return tuple(sorted(int(n) for n in found if n.isdigit()))


def _node_of(node_dir: Path, online: tuple[int, ...]) -> dict[int, int]:
    node_of: dict[int, int] = {}
    for path in node_dir.glob("node[0-9]*"):
        if path.name[4:].isdigit():
            for cpu in parse_cpulist(_read_text(path / "cpulist")):
                node_of[cpu] = int(path.name[4:])
    # No node directory (kernels without NUMA, some containers): one node 0 holds everything.
    fallback = min(node_of.values(), default=0)
    return {cpu: node_of.get(cpu, fallback) for cpu in online}


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _read_int(path: Path, default: int) -> int:
    text = _read_text(path)
    return int(text) if text.lstrip("-").isdigit() else default


def within_cpu_limit(topology: Topology, limit: int | None) -> Topology:
    """The part of `topology` a CPU quota of `limit` CPUs pays for: when the quota is below the
    CPUs online, the first `limit` physical cores (NUMA node order), one thread each; more
    threads than the quota would only be throttled. Unchanged without a quota below it."""
    if limit is None or limit >= len(topology.cpus):
        return topology
    cores = [core for node in topology.node_ids for core in topology.physical_cores(node)]
    keep = {core[0] for core in cores[:limit]}
    cpus = tuple(cpu for cpu in topology.cpus if cpu.id in keep)
    nodes: dict[int, list[int]] = defaultdict(list)
    for cpu in cpus:
        nodes[cpu.node].append(cpu.id)
    return Topology(cpus=cpus, nodes={n: tuple(ids) for n, ids in sorted(nodes.items())})

"""Placement of worker processes on physical cores and NUMA nodes, shared by every model."""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from serving.routing.topology import Topology
from serving.workers.pinning import WorkerPlacement, find_allocator

Core = tuple[int, ...]  # the CPU ids of one physical core


class PlacementPolicy(BaseModel):
    """How one model's workers are placed; the worker count comes from the caller."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: Literal["auto"] | bool = "auto"
    cores_per_worker: PositiveInt | Literal["auto"] = "auto"
    use_logical_cores: bool = False
    allow_core_sharing: bool = False
    nodes: list[NonNegativeInt] | None = Field(default=None, min_length=1)
    bind_memory: bool = True
    allocator: Literal["default", "jemalloc", "tcmalloc"] = "default"
    flush_denormal: bool = True


class _Held(NamedTuple):
    owner: str
    placement: WorkerPlacement
    cores: tuple[Core, ...]


class CoreAllocator:
    """Hands out physical cores to the workers of many models, one `allocate` call at a time.

    Existing workers never move: scaling up only places the new ones, `release` frees cores.
    """

    def __init__(self, topology: Topology, reserved_gateway_cpus: int | None = None, *,
                 find_library: Callable[[str], str | None] = find_allocator) -> None:
        total = len(topology.physical_cores())
        # The gateway's event loop answers every request; on 4+ cores one whole core for it
        # keeps the workers' OpenMP threads from preempting it.
        reserve = reserved_gateway_cpus if reserved_gateway_cpus is not None else int(total >= 4)
        first = topology.physical_cores(topology.node_ids[0])
        if not 0 <= reserve < total or reserve > len(first):
            raise ValueError(f"cannot reserve {reserve} physical cores for the gateway: the "
                             f"machine has {total}, {len(first)} on its first NUMA node")
        self._find_library = find_library
        self._reserved = first[:reserve]
        self._cores = {n: [c for c in topology.physical_cores(n) if c not in self._reserved]
                       for n in topology.node_ids}
        self._use: Counter[Core] = Counter()
        self._held: list[_Held] = []

    @property
    def reserved_cpus(self) -> tuple[int, ...]:
        """CPUs kept for the gateway process (pin it there), never given to a worker."""
        return tuple(sorted(cpu for core in self._reserved for cpu in core))

    @property
    def worker_core_count(self) -> int:
        """Physical cores workers may be given (all but the gateway's)."""
        return sum(len(cores) for cores in self._cores.values())

    def startup_size(self, n_workers: int) -> int:
        """Cores each of `n_workers` (of all the models loaded together) would get on the free
        cores with no worker split across NUMA nodes; 0 when they do not all fit."""
        return _auto_size([sum(1 for c in cores if not self._use[c])
                           for cores in self._cores.values()], n_workers)

    def placements(self, owner: str) -> list[WorkerPlacement]:
        return [h.placement for h in self._held if h.owner == owner]

    def allocate(self, owner: str, n_workers: int,
                 policy: PlacementPolicy) -> list[WorkerPlacement]:
        """Place `n_workers` more workers of `owner`; raises ValueError only when
        `policy.enabled is True` and they do not fit."""
        if n_workers < 1:
            raise ValueError(f"{owner}: asked to place {n_workers} workers")
        nodes = self._nodes(policy)
        library = None if policy.allocator == "default" else self._find_library(policy.allocator)
        missing = (f"{policy.allocator} is not installed; the default allocator is used"
                   if policy.allocator != "default" and library is None else None)
        if policy.enabled is False:
            return self._unpinned(owner, n_workers, policy, nodes, library,
                                  _join("CPU pinning is disabled", missing))
        plan, size = self._plan(owner, n_workers, policy, nodes, sharing=False)
        shared = plan is None and policy.allow_core_sharing
        if shared:
            plan, size = self._plan(owner, n_workers, policy, nodes, sharing=True)
        if plan is None:
            free = sum(1 for n in nodes for c in self._cores[n] if not self._use[c])
            why = (f"{owner}: {n_workers} worker(s) x {size} physical core(s) = "
                   f"{n_workers * size} asked, {free} free on NUMA node(s) "
                   f"{','.join(map(str, nodes))} (a worker stays within one node when it fits)")
            if policy.enabled is True:
                raise ValueError(f"cannot pin {why}")
            return self._unpinned(owner, n_workers, policy, nodes, library,
                                  _join(why + "; running unpinned", missing))
        reason = _join(f"{owner}: cores are shared with other workers" if shared else None, missing)
        return [self._commit(owner, node, cores, policy, library, shared, reason)
                for node, cores in plan]

    def release(self, placement: WorkerPlacement) -> None:
        for i, held in enumerate(self._held):
            if held.placement is placement:
                self._use.subtract(held.cores)
                del self._held[i]
                return
        raise ValueError(f"placement {placement.to_dict()} is not held by this allocator")

    def _nodes(self, policy: PlacementPolicy) -> list[int]:
        if policy.nodes is None:
            return list(self._cores)
        missing = sorted(set(policy.nodes) - set(self._cores))
        if missing:
            raise ValueError(f"policy names NUMA node(s) {missing}; this machine has "
                             f"{list(self._cores)}")
        return sorted(set(policy.nodes))

    def _plan(self, owner: str, n_workers: int, policy: PlacementPolicy, nodes: list[int],
              sharing: bool) -> tuple[list[tuple[int | None, list[Core]]] | None, int]:
        """Where each new worker goes, tried on a copy of the core use counts (None: no fit)."""
        use = Counter(self._use)

        def usable(node: int) -> list[Core]:
            # Stable sort: least used first, and among equals the lowest-numbered core.
            cores = self._cores[node] if sharing else [c for c in self._cores[node] if not use[c]]
            return sorted(cores, key=lambda c: use[c])

        if isinstance(policy.cores_per_worker, int):
            size = policy.cores_per_worker
        else:
            size = _auto_size([len(usable(nd)) for nd in nodes], n_workers) or int(sharing)
            mine = [len(h.cores) for h in self._held if h.owner == owner and h.cores]
            if size and mine:  # a scaled-up model keeps workers of one size (one compile cache)
                size = min(size, mine[0])
        if not size:
            return None, 1
        biggest = max(len(self._cores[nd]) for nd in nodes)
        per_node = Counter(h.placement.node for h in self._held if h.owner == owner)
        plan: list[tuple[int | None, list[Core]]] = []
        for _ in range(n_workers):
            where: int | None = None
            if size <= biggest:
                fits = [nd for nd in nodes if len(usable(nd)) >= size]
                if not fits:
                    return None, size
                # Round-robin over the nodes for this model first, then the least busy node.
                where = min(fits, key=lambda nd: (per_node[nd],
                                                  sum(use[c] for c in self._cores[nd])))
                picked = usable(where)[:size]
            else:  # bigger than any node: span the fewest, emptiest nodes
                by_room = sorted(nodes, key=lambda nd: -len(usable(nd)))
                picked = sorted((c for nd in by_room for c in usable(nd)), key=lambda c: use[c])
                if len(picked) < size:
                    return None, size
                picked = picked[:size]
            use.update(picked)
            per_node[where] += 1
            plan.append((where, picked))
        return plan, size

    def _commit(self, owner: str, node: int | None, cores: list[Core], policy: PlacementPolicy,
                library: str | None, shared: bool, reason: str | None) -> WorkerPlacement:
        # Without logical cores only a core's first thread runs work; its sibling stays idle
        # rather than serving another worker's threads.
        width = None if policy.use_logical_cores else 1
        cpus = tuple(sorted(cpu for c in cores for cpu in c[:width]))
        placement = WorkerPlacement(
            cpus=cpus, node=node, threads=len(cpus), allocator=library, shared=shared,
            bind_memory=policy.bind_memory and node is not None,
            flush_denormal=policy.flush_denormal, reason=reason)
        self._use.update(cores)
        self._held.append(_Held(owner, placement, tuple(sorted(cores))))
        return placement

    def _unpinned(self, owner: str, n: int, policy: PlacementPolicy, nodes: list[int],
                  library: str | None, reason: str | None) -> list[WorkerPlacement]:
        cores = [c for node in nodes for c in self._cores[node]]
        units = sum(len(c) for c in cores) if policy.use_logical_cores else len(cores)
        cpus = tuple(sorted(cpu for c in cores for cpu in c))
        # Unpinned workers share the CPUs with every worker already running there (pinned
        # ones run a thread per CPU they hold): only what those leave is split among the new
        # ones, so the threads on these CPUs add up to at most their number (1 each at least).
        taken = sum(h.placement.threads for h in self._held if set(h.placement.cpus) & set(cpus))
        threads = max(1, (units - taken) // n)
        sizing = (f"{threads} thread(s) per unpinned worker: {units} CPU(s), {taken} already "
                  f"used by other workers, {n} new worker(s)")
        placements = [WorkerPlacement(
            cpus=cpus, node=None, threads=threads, allocator=library,
            flush_denormal=policy.flush_denormal, shared=True, reason=_join(reason, sizing))
            for _ in range(n)]
        self._held.extend(_Held(owner, p, ()) for p in placements)
        return placements


def _auto_size(free_per_node: list[int], n: int) -> int:
    """The most cores each of `n` workers can get with no worker split across nodes (0: none)."""
    for size in range(sum(free_per_node) // n, 0, -1):
        if sum(free // size for free in free_per_node) >= n:
            return size
    return 0


def _join(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


# TorchServe's launcher flags (`--x-y` and `--x_y` alike; torch.backends.xeon.run_cpu's names)
# and the policy field each one sets; --skip-cross-node-cores asks for what the allocator
# always does, and --multi_instance for what several workers always are, so they set nothing.
_FLAGS: dict[str, tuple[str, Any]] = {
    "--use_logical_core": ("use_logical_cores", True),
    "--disable_numactl": ("bind_memory", False),
    "--enable_jemalloc": ("allocator", "jemalloc"),
    "--enable_tcmalloc": ("allocator", "tcmalloc"),
    "--use_default_allocator": ("allocator", "default"),
    "--skip_cross_node_cores": ("", None),
    "--multi_instance": ("", None),
}
_OPTIONS = ("--ninstances", "--ncores_per_instance", "--node_id")
# Accepted so that a TorchServe config keeps starting, but nothing here to set: the worker's
# OpenMP runtime is the one torch ships, affinity is set by the worker itself, and logs go to
# the server log.
_NO_EFFECT_FLAGS = ("--disable_iomp", "--disable_taskset", "--no_python", "--module")
_NO_EFFECT_OPTIONS = ("--log_path", "--log_file_prefix", "--rank")
_MODES = ("--throughput_mode", "--latency_mode")
LATENCY_MODE_CORES = 4  # run_cpu's latency mode: 4 physical cores per instance


class LauncherArgs(NamedTuple):
    """What `cpu_launcher_args` ask for, as placement."""

    policy: PlacementPolicy
    instances: int | None  # workers per model, from --ninstances or a mode
    ignored: tuple[str, ...]  # flags accepted with no effect here


def parse_launcher_args(args: str, threads_per_core: int = 1, *, nodes: int = 1,
                        physical_cores: int | None = None) -> LauncherArgs:
    """Map TorchServe's `cpu_launcher_args` to a policy and the instance count, if given.

    `--ncores_per_instance` counts hyper-threads under `--use_logical_core`; pass the machine's
    `threads_per_core` so it becomes whole physical cores. `--throughput_mode` is one worker
    per NUMA node (`nodes`), `--latency_mode` workers of 4 physical cores on all of them
    (`physical_cores`), as run_cpu does.
    """
    fields: dict[str, Any] = {}
    numbers: dict[str, int] = {}
    ignored: list[str] = []
    modes: list[str] = []
    words = shlex.split(args)
    while words:
        raw, eq, value = words.pop(0).partition("=")
        flag = "--" + raw.lstrip("-").replace("-", "_")
        if flag == "--m":
            flag = "--module"
        if flag in _OPTIONS or flag in _NO_EFFECT_OPTIONS:
            value = value if eq else (words.pop(0) if words else "")
            if flag in _NO_EFFECT_OPTIONS:
                if not value:
                    raise ValueError(f"cpu_launcher_args: {raw} needs a value")
                ignored.append(f"{raw} {value}")
                continue
            if not value.isdigit() or (flag != "--node_id" and int(value) == 0):
                raise ValueError(f"cpu_launcher_args: {raw} needs a count, got {value!r}")
            numbers[flag] = int(value)
        elif eq:
            raise ValueError(f"cpu_launcher_args: unknown flag {raw + eq + value!r} "
                             f"({raw} takes no value)")
        elif flag in _FLAGS:
            name, setting = _FLAGS[flag]
            if name and fields.get(name, setting) != setting:
                raise ValueError(f"cpu_launcher_args: {raw} contradicts an earlier flag "
                                 f"({name} is {fields[name]!r})")
            if name:
                fields[name] = setting
        elif flag in _MODES:
            modes.append(flag)
        elif flag in _NO_EFFECT_FLAGS:
            ignored.append(raw)
        else:
            raise ValueError(f"cpu_launcher_args: unknown flag {raw!r}")
    if len(modes) > 1:
        raise ValueError("cpu_launcher_args: choose --throughput_mode or --latency_mode")
    if modes and ({"--ninstances", "--ncores_per_instance"} & set(numbers)):
        raise ValueError(f"cpu_launcher_args: {modes[0]} sets the instances and their cores "
                         "itself; drop --ninstances / --ncores_per_instance")
    instances = numbers.get("--ninstances")
    if modes == ["--throughput_mode"]:
        instances = nodes
    elif modes == ["--latency_mode"]:
        fields["cores_per_worker"] = LATENCY_MODE_CORES
        if physical_cores is not None:
            instances = max(1, physical_cores // LATENCY_MODE_CORES)
    if "--ncores_per_instance" in numbers:
        cores = numbers["--ncores_per_instance"]
        logical = fields.get("use_logical_cores", False)
        fields["cores_per_worker"] = max(1, cores // threads_per_core) if logical else cores
    if "--node_id" in numbers:
        fields["nodes"] = [numbers["--node_id"]]
    return LauncherArgs(PlacementPolicy(**fields), instances, tuple(ignored))

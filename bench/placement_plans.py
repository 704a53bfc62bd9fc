"""What the placement policy picks on machines bigger than this one (fake sysfs trees), for the
benchmark report: computed by the server's own allocator, not copied from the docs.

    python -m bench.placement_plans
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from serving.routing.resources import Accelerators, Resources
from serving.routing.topology import Topology
from serving.settings import Settings
from serving.workers.pinning import format_cpulist
from tests.unit.routing.test_topology import (
    four_uneven_nodes,
    one_socket_ht,
    this_machine_like,
    two_socket,
)

MACHINES: list[tuple[str, Callable[[Path], Topology]]] = [
    ("this VM: 2 cores, 1 node", this_machine_like),
    ("1 socket x 8 cores x 2 HT", one_socket_ht),
    ("2 sockets x 28 cores x 2 HT", two_socket),
    ("4 NUMA nodes of 6, 6, 4, 4 cores", four_uneven_nodes),
]
WORKERS = (1, 2, 4, 8)


def plan(make: Callable[[Path], Topology], workers: int) -> tuple[str, str]:
    """(gateway CPUs, the workers' placements) for one model of `workers` loaded at start."""
    with tempfile.TemporaryDirectory() as root:
        res = Resources(Settings(), make(Path(root)), Accelerators(None, 0))
        res.plan_startup(workers)
        placed = res.place("model", workers, res.policy_for({}))
    gateway = format_cpulist(res.allocator.reserved_cpus) or "none"
    if all(p.shared for p in placed):
        return gateway, f"unpinned, {placed[0].threads} thread(s) each"
    cells = [f"n{p.node}: {format_cpulist(p.cpus)}" for p in placed]
    if len(cells) > 4:
        sizes = {len(p.cpus) for p in placed}
        nodes = sorted({p.node for p in placed if p.node is not None})
        return gateway, (f"{'/'.join(map(str, sorted(sizes)))} cores each on nodes "
                         f"{','.join(map(str, nodes))}")
    return gateway, "; ".join(cells)


def markdown() -> str:
    lines = ["| machine | gateway | " + " | ".join(f"{n} worker(s)" for n in WORKERS) + " |",
             "|---|---|" + "---|" * len(WORKERS)]
    for name, make in MACHINES:
        cells = [plan(make, n) for n in WORKERS]
        lines.append(f"| {name} | {cells[0][0]} | " + " | ".join(c[1] for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown())

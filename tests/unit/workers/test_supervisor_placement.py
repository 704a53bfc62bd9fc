"""Worker pools placing workers through one shared core allocator, scaled concurrently."""

from __future__ import annotations

import asyncio
from pathlib import Path

from serving.errors import ServingError
from serving.routing.resources import Accelerators, Resources
from serving.settings import Settings
from serving.workers.listener import WorkerListener
from serving.workers.pinning import WorkerPlacement
from serving.workers.spec import WorkerSpec
from serving.workers.supervisor import WorkerPool
from tests.unit.routing.test_topology import one_socket_ht

ONE_CORE = {"placement": {"cores_per_worker": 1, "enabled": True}}


class SpawnRefused(ServingError):
    """What the spec factory raises: the test watches placements, not processes."""


def pool_for(label: str, resources: Resources, listener: WorkerListener,
             seen: list[tuple[str, int, WorkerPlacement | None]]) -> WorkerPool:
    def spec(slot: int, placement: WorkerPlacement | None) -> WorkerSpec:
        seen.append((label, slot, placement))
        raise SpawnRefused(f"{label}: no process in this test")

    return WorkerPool(label, spec, listener, on_ready=lambda w: None, on_gone=lambda w: None,
                      startup_timeout=5.0,
                      place=lambda n: resources.place(label, n, resources.policy_for(ONE_CORE)),
                      release=resources.release)


def test_concurrent_scale_ups_never_place_a_core_twice(tmp_path: Path) -> None:
    resources = Resources(Settings(), one_socket_ht(tmp_path), Accelerators(None, 0))
    seen: list[tuple[str, int, WorkerPlacement | None]] = []

    async def scenario() -> list[object]:
        listener = WorkerListener(tmp_path / "w.sock")
        a = pool_for("a", resources, listener, seen)
        b = pool_for("b", resources, listener, seen)
        # Two scale-ups of one model and one of another, all before any worker is spawned.
        return await asyncio.gather(a.scale(2), a.scale(2), b.scale(2),
                                    return_exceptions=True)

    results = asyncio.run(scenario())
    cpus = [cpu for _, _, p in seen if p is not None for cpu in p.cpus]
    assert len(cpus) == len(set(cpus))  # no CPU handed out twice
    # The second scale-up of `a` finds two starts already under way and adds none.
    assert [type(r) for r in results] == [SpawnRefused, type(None), SpawnRefused]
    assert sorted((label, slot) for label, slot, _ in seen) == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    # Every failed start gave its cores back: nothing is left held.
    assert resources.allocator.placements("a") == resources.allocator.placements("b") == []

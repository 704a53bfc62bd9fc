"""The trimmer hands memory back only after a burst of connections has gone."""

from __future__ import annotations

import asyncio

from serving.gateway.memory import ConnectionTrimmer, _load_malloc_trim


def test_trims_once_a_burst_has_gone_and_not_while_steady() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    inference: set[int] = set(range(10))
    management: set[int] = set()
    trimmer = ConnectionTrimmer([inference, management], burst=100, trim=trim)

    async def scenario() -> list[bool]:
        seen = [await trimmer.check()]  # steady: 10 open
        inference.update(range(1000))  # a burst opens
        management.update(range(50))
        seen.append(await trimmer.check())
        for n in range(1000, 200, -1):  # most of it goes, but not yet `burst` below the peak
            inference.discard(n)
            if n == 951:
                seen.append(await trimmer.check())  # 1050 -> 1001: 49 fewer, no trim
        seen.append(await trimmer.check())  # 1050 -> 251: trim
        seen.append(await trimmer.check())  # the new peak is 251: steady, no trim
        return seen

    assert asyncio.run(scenario()) == [False, False, False, True, False]
    assert calls == [0]
    assert trimmer.trims == 1
    assert trimmer.open_connections() == 251


def test_no_c_library_trim_means_no_trimming() -> None:
    trimmer = ConnectionTrimmer([set(range(500))], burst=1)
    trimmer._trim = None
    assert asyncio.run(trimmer.check()) is False


def test_glibc_trim_is_found_and_callable_here() -> None:
    trim = _load_malloc_trim()
    assert trim is not None  # this project's images and CI run on glibc
    assert trim(0) in (0, 1)

"""The registry's versions and default version (the objects behind them are not used)."""

from __future__ import annotations

from typing import Any

import pytest

from serving.errors import ModelNotFound, ModelVersionNotFound
from serving.routing.registry import ModelSettings, ModelVersion, Registry


def version(name: str, v: str) -> ModelVersion:
    unused: Any = None
    return ModelVersion(name=name, version=v, url=f"{name}.mar", archive=unused, handler="h",
                        runtime="python", settings=ModelSettings(), model_yaml={},
                        scheduler=unused, pool=unused)


def test_first_version_is_the_default_and_versions_sort_numerically() -> None:
    reg = Registry()
    for v in ("2.0", "10.0", "1.0"):
        reg.add(version("m", v))
    assert reg.default_version("m") == "2.0"
    assert [mv.version for mv in reg.versions("m")] == ["1.0", "2.0", "10.0"]
    reg.set_default("m", "10.0")
    assert reg.get("m").version == "10.0"
    with pytest.raises(ModelVersionNotFound):
        reg.set_default("m", "3.0")


def test_removing_the_default_moves_it_to_the_highest_left() -> None:
    reg = Registry()
    first, second, third = version("m", "1.0"), version("m", "3.0"), version("m", "2.0")
    for mv in (first, second, third):
        reg.add(mv)
    reg.remove(first)  # e.g. the registration of the first version failed late
    assert reg.default_version("m") == "3.0" and reg.get("m") is second
    reg.remove(second)
    reg.remove(third)
    with pytest.raises(ModelNotFound):
        reg.get("m")
    assert reg.names() == []

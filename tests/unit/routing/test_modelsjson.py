"""config.properties' `models=` JSON: the start-up checks and what an entry says."""

from __future__ import annotations

from typing import Any

import pytest

from serving.errors import BadRequest, ConfigError
from serving.routing.modelsjson import (
    check_models_json,
    checked_runtime,
    entry_runtime,
    is_default,
)


def test_torchserve_documented_entry_passes() -> None:
    check_models_json({"resnet-152": {"1.0": {
        "defaultVersion": True, "marName": "resnet-152.mar", "minWorkers": 1, "maxWorkers": 1,
        "batchSize": 8, "maxBatchDelay": 50, "responseTimeout": 120, "runtime": "python"}}})


@pytest.mark.parametrize(("runtime", "expected"), [
    ("python", "python"), ("python3", "python3"), ("PYTHON", "python"), ("LSP", None),
    ("cpp", None), ("", None), (3, None), (None, None)])
def test_entry_runtime(runtime: Any, expected: str | None) -> None:
    assert entry_runtime({"runtime": runtime}) == expected


@pytest.mark.parametrize("runtime", ["LSP", "cpp", "", 3, None])
def test_checked_runtime_refuses_what_entry_runtime_does_not_read(runtime: Any) -> None:
    with pytest.raises(BadRequest, match=f"runtime {runtime!r} cannot serve archive a.mar"):
        checked_runtime(runtime, "archive a.mar")


def test_checked_runtime_lower_cases() -> None:
    assert checked_runtime("Python3", "archive a.mar") == "python3"


def test_is_default_reads_the_json_boolean() -> None:
    assert is_default({"defaultVersion": True})
    assert not is_default({"defaultVersion": False})
    assert not is_default({})


@pytest.mark.parametrize(("models", "needle"), [
    ({"m": {"1.0": {"runtime": "LSP"}}}, "models: m/1.0: runtime 'LSP' cannot serve model m"),
    ({"m": {"1.0": {"defaultVersion": True}, "2.0": {"defaultVersion": True}}},
     "models: m: defaultVersion is true for versions 1.0, 2.0"),
    ({"m": {"1.0": {"batchsize": 8}}}, "models: m/1.0: unknown key(s) batchsize"),
    ({"m": {"1.0": {"defaultVersion": "maybe"}}}, "models: m/1.0: defaultVersion"),
    ({"m": ["1.0"]}, "models: m: expected {version: {key: value}}"),
])
def test_bad_entries_are_config_errors_naming_the_model(models: dict[str, Any],
                                                        needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_models_json(models)
    assert needle in str(info.value)

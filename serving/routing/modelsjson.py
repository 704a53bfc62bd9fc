"""config.properties' `models=` JSON: {name: {version: {TorchServe key: value}}}, checked once at
start-up, and what it says about each version's runtime and default version."""

from __future__ import annotations

from typing import Any

from serving.errors import ConfigError, ServingError
from serving.handlers.modelconfig import FRONTEND_KEYS, frontend_config

# TorchServe's runtime types (`Manifest.RuntimeType`) that run a Python handler.
RUNTIMES = ("python", "python3")
ENTRY_KEYS = FRONTEND_KEYS | {"marName", "defaultVersion", "runtime"}


def check_models_json(models: dict[str, Any]) -> None:
    """A typo'd key, a wrong type, a runtime that is not Python or two default versions of
    one model are start-up errors naming the model, not settings silently left out."""
    for name, versions in models.items():
        if not isinstance(versions, dict):
            raise ConfigError(f"models: {name}: expected {{version: {{key: value}}}}")
        for version, cfg in versions.items():
            where = f"models: {name}/{version}"
            if not isinstance(cfg, dict):
                raise ConfigError(f"{where}: expected {{key: value}}, got {cfg!r}")
            unknown = sorted(set(cfg) - ENTRY_KEYS)
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
            if "runtime" in cfg and entry_runtime(cfg) is None:
                raise ConfigError(f"{where}: runtime {cfg['runtime']!r} cannot serve model "
                                  f"{name}: only Python handlers run here (runtime "
                                  f"{' or '.join(RUNTIMES)})")
            try:
                frontend_config(cfg, where)
            except ServingError as e:
                raise ConfigError(e.message) from None
        defaults = [version for version, cfg in versions.items() if is_default(cfg)]
        if len(defaults) > 1:
            raise ConfigError(f"models: {name}: defaultVersion is true for versions "
                              f"{', '.join(defaults)}; a model has one default version")


def entry_runtime(cfg: dict[str, Any]) -> str | None:
    """The entry's `runtime` when it is one this server runs (lower-cased), else None."""
    runtime = cfg.get("runtime")
    if isinstance(runtime, str) and runtime.lower() in RUNTIMES:
        return runtime.lower()
    return None


def is_default(cfg: dict[str, Any]) -> bool:
    """Whether the entry says `"defaultVersion": true` (read as model-config values are)."""
    return frontend_config(cfg, "models").default_version is True

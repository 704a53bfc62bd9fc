"""config.properties' `models=` JSON: {name: {version: {TorchServe key: value}}}, checked once at
start-up, and what it says about each version's runtime and default version."""

from __future__ import annotations

from typing import Any

from serving.errors import BadRequest, ConfigError, ServingError
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
            try:
                if "runtime" in cfg:
                    checked_runtime(cfg["runtime"], f"model {name}", f"{where}: ")
                frontend_config(cfg, where)
            except ServingError as e:
                raise ConfigError(e.message) from None
        defaults = [version for version, cfg in versions.items() if is_default(cfg)]
        if len(defaults) > 1:
            raise ConfigError(f"models: {name}: defaultVersion is true for versions "
                              f"{', '.join(defaults)}; a model has one default version")


def python_runtime(runtime: object) -> str | None:
    """`runtime` lower-cased when it is one this server runs, else None."""
    if isinstance(runtime, str) and runtime.lower() in RUNTIMES:
        return runtime.lower()
    return None


def checked_runtime(runtime: object, subject: str, where: str = "") -> str:
    """`runtime` lower-cased, or a 400 naming it: the one rule for `models=` entries and for
    the `runtime` of a registration (REST and gRPC). TorchServe refuses a runtime outside its
    `Manifest.RuntimeType` with a 400 too; the ones it runs but this server does not (LSP)
    are refused here as well."""
    checked = python_runtime(runtime)
    if checked is None:
        raise BadRequest(f"{where}runtime {runtime!r} cannot serve {subject}: only Python "
                         f"handlers run here (runtime {' or '.join(RUNTIMES)})")
    return checked


def entry_runtime(cfg: dict[str, Any]) -> str | None:
    """The entry's `runtime` when it is one this server runs (lower-cased), else None."""
    return python_runtime(cfg.get("runtime"))


def is_default(cfg: dict[str, Any]) -> bool:
    """Whether the entry says `"defaultVersion": true` (read as model-config values are)."""
    return frontend_config(cfg, "models").default_version is True

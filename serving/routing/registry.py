"""The registry of models and their versions, with the default version of each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from serving.errors import ModelNotFound, ModelVersionNotFound
from serving.handlers.archive import UnpackedArchive
from serving.oip.metadata import UNDECLARED, ModelMetadata
from serving.routing.scheduler import Scheduler
from serving.workers.supervisor import WorkerPool


@dataclass(frozen=True)
class ModelSettings:
    """The serving parameters of one model version, after every source is merged."""

    batch_size: int = 1
    max_batch_delay: int = 100  # ms, TorchServe's default
    min_workers: int = 1
    max_workers: int = 1
    response_timeout: int = 120  # s
    startup_timeout: int = 120  # s
    job_queue_size: int = 100
    client_timeout_ms: int | None = None
    device_type: str | None = None
    device_ids: tuple[int, ...] | None = None
    isolate_device: bool = False
    max_inflight_batches: int | None = None


@dataclass(eq=False)
class ModelVersion:
    """One registered version: its archive, settings, queue and workers."""

    name: str
    version: str
    url: str
    archive: UnpackedArchive
    handler: str
    runtime: str
    settings: ModelSettings
    model_yaml: dict[str, Any]
    scheduler: Scheduler
    pool: WorkerPool
    loaded_at_startup: bool = False
    optimization: dict[str, Any] | None = None  # the validated `optimization:` config
    oip: ModelMetadata = UNDECLARED  # the declared OIP metadata (`oip:` block)


class Registry:
    """Models by name, each with its versions and a default version."""

    def __init__(self) -> None:
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._defaults: dict[str, str] = {}

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The named version, or the default one; 404 errors name what is missing."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"Model not found: {name}")
        if version is None:
            return versions[self._defaults[name]]
        found = versions.get(version)
        if found is None:
            raise ModelVersionNotFound(f"Model version: {version} does not exist for model: "
                                       f"{name}")
        return found

    def versions(self, name: str) -> list[ModelVersion]:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"Model not found: {name}")
        return sorted(versions.values(), key=lambda mv: _version_key(mv.version))

    def default_version(self, name: str) -> str:
        return self._defaults[name]

    def names(self) -> list[str]:
        return sorted(self._models)

    def all_versions(self) -> list[ModelVersion]:
        return [mv for versions in self._models.values() for mv in versions.values()]

    def exists(self, name: str, version: str) -> bool:
        return version in self._models.get(name, {})

    def add(self, mv: ModelVersion) -> None:
        versions = self._models.setdefault(mv.name, {})
        versions[mv.version] = mv
        self._defaults.setdefault(mv.name, mv.version)

    def remove(self, mv: ModelVersion) -> None:
        versions = self._models.get(mv.name, {})
        versions.pop(mv.version, None)
        if not versions:
            self._models.pop(mv.name, None)
            self._defaults.pop(mv.name, None)
        elif self._defaults.get(mv.name) == mv.version:
            # The default went (a registration of it failed after others were added): the
            # highest remaining version takes over, so the name never points at nothing.
            self._defaults[mv.name] = max(versions, key=_version_key)

    def set_default(self, name: str, version: str) -> None:
        self.get(name, version)
        self._defaults[name] = version


def _version_key(version: str) -> tuple[int, Version | str]:
    try:
        return (0, Version(version))
    except InvalidVersion:
        return (1, version)

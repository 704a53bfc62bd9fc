"""An archive's `model-config.yaml`: the frontend keys the server reads, validated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import ArchiveError

MAX_CONFIG_SIZE = 1 << 20  # bytes; a model-config.yaml is a few hundred

# TorchServe's frontend keys; every other top-level key belongs to the handler
# (`context.model_yaml_config`) and is passed through untouched.
FRONTEND_KEYS = frozenset({
    "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout",
    "startupTimeout", "deviceType", "deviceIds", "jobQueueSize", "clientTimeoutInMills",
    "parallelType", "parallelLevel", "useJobTicket", "continuousBatching",
    "sequenceMaxIdleMSec", "maxSequenceJobQueueSize", "maxNumSequence", "sequenceBatching",
    "asyncCommunication", "maxRetryTimeoutInSec", "runtimeType",
    # this server's own: which device each worker sees only its own device, and placement
    "isolateDevice", "placement", "maxInflightBatches",
})


class FrontendConfig(BaseModel):
    """The frontend keys of model-config.yaml (or of config.properties' `models=` JSON)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    min_workers: int | None = Field(None, alias="minWorkers", ge=0)
    max_workers: int | None = Field(None, alias="maxWorkers", ge=0)
    batch_size: int | None = Field(None, alias="batchSize", ge=1)
    max_batch_delay: int | None = Field(None, alias="maxBatchDelay", ge=0)
    response_timeout: int | None = Field(None, alias="responseTimeout", ge=1)
    startup_timeout: int | None = Field(None, alias="startupTimeout", ge=1)
    device_type: Literal["auto", "cpu", "gpu", "cuda", "xpu"] | None = Field(
        None, alias="deviceType")
    device_ids: list[int] | None = Field(None, alias="deviceIds")
    isolate_device: bool | None = Field(None, alias="isolateDevice")
    max_inflight_batches: int | None = Field(None, alias="maxInflightBatches", ge=1)
    job_queue_size: int | None = Field(None, alias="jobQueueSize", ge=1)
    client_timeout_ms: int | None = Field(None, alias="clientTimeoutInMills", ge=0)
    default_version: bool | None = Field(None, alias="defaultVersion")
    mar_name: str | None = Field(None, alias="marName")

    def merged_over(self, lower: FrontendConfig) -> FrontendConfig:
        """These values where set, `lower`'s elsewhere."""
        mine = self.model_dump(exclude_none=True)
        return lower.model_copy(update=mine)


def read_model_yaml(model_dir: Path, config_file: str | None) -> dict[str, Any]:
    """The parsed `model-config.yaml` named by the manifest, `{}` when there is none."""
    if not config_file:
        return {}
    path = model_dir / config_file
    # The manifest is the archive's own: its configFile must not reach outside the model
    # folder (a parse error would echo another file's lines to the client).
    inside = Path(os.path.realpath(path)).is_relative_to(os.path.realpath(model_dir))
    if not inside or not path.is_file():
        raise ArchiveError(f"the manifest names config file {config_file!r}, which is "
                           "not in the archive")
    if path.stat().st_size > MAX_CONFIG_SIZE:
        raise ArchiveError(f"{config_file}: larger than {MAX_CONFIG_SIZE} bytes")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ArchiveError(f"{config_file}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArchiveError(f"{config_file}: the top level must be a mapping")
    return data


def frontend_config(data: dict[str, Any], source: str) -> FrontendConfig:
    """Validate the frontend keys of a model config; a wrong type is a clear error."""
    try:
        return FrontendConfig.model_validate({k: v for k, v in data.items()
                                              if k in FrontendConfig.model_fields
                                              or _is_alias(k)})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in e.errors())
        raise ArchiveError(f"{source}: {problems}") from None


def _is_alias(key: str) -> bool:
    return any(f.alias == key for f in FrontendConfig.model_fields.values())


def check_sendable(model_yaml: dict[str, Any], source: str) -> None:
    """The handler gets model-config.yaml as JSON data; a value YAML reads as something else
    (an unquoted date, a timestamp, a set) is the archive's error, named by its key."""
    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise ArchiveError(f"{source}: key {key!r} under {where or 'the top'} "
                                       "is not a string or number")
                walk(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        elif not isinstance(value, str | int | float | bool) and value is not None:
            raise ArchiveError(f"{source}: {where}: a {type(value).__name__} value "
                               f"({value!s:.40}) cannot be passed to the handler; quote it "
                               "to make it a string")
    walk(model_yaml, "")

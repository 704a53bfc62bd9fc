"""The one typed settings object, built once at start-up from the CLI and `config.properties`."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from serving.cpuflags import RELEVANT_CPU_FLAGS
from serving.errors import ConfigError
from serving.properties import read_properties
from serving.routing.addresses import IPNetwork, parse_networks

log = logging.getLogger(__name__)

# TorchServe's switch for `TS_<KEY>` environment variables (see build_settings).
ENVVARS_KEY = "enable_envvars_config"
# TorchServe keys that configure its Java frontend or features this server does differently.
# A TorchServe user's config.properties keeps working: these are accepted with one log line.
IGNORED_TORCHSERVE_KEYS = frozenset({
    "number_of_netty_threads", "netty_client_threads", "async_logging", "vmargs",
    "install_py_dep_per_model", "workflow_store", "use_native_io",
    "io_ratio", "metrics_format", "initial_worker_port",
    "initial_distribution_port", "plugins_path", "snapshot_store", "model_snapshot",
    "cors_allowed_origin", "cors_allowed_methods", "cors_allowed_headers", "blacklist_env_vars",
    "system_metrics_cmd", "model_server_home", "preload_model", "ipex_enable",
    "ipex_gpu_enable", "max_response_size_in_mb", "maxRetryTimeoutInSec",
    "prefer_direct_buffer", "unregister_model_timeout", "use_env_allowed_urls",
    "model_metrics_auto_detect", "cpp_log_config",
    # `debug`: TorchServe's developer mode (one worker per model); `python`: the workers'
    # interpreter (here they run with the server's own, sys.executable); `version` and
    # `tsConfigFile` are written by TorchServe itself into its config snapshots.
    "debug", "python", "version", "tsConfigFile",
    "ts_header_key_sequence_id", "ts_header_key_sequence_start", "ts_header_key_sequence_end",
    # TorchServe's switch to the Open Inference Protocol: here it is always served (/v2).
    "ts_open_inference_protocol",
})
# TorchServe keys whose meaning this server cannot honour yet: silently ignoring them would
# leave a user believing they are protected, so they stop the start-up instead.
UNSUPPORTED_TORCHSERVE_KEYS = {
    "keystore": "TLS is not served directly; terminate TLS at a proxy",
    "keystore_pass": "TLS is not served directly; terminate TLS at a proxy",
    "keystore_type": "TLS is not served directly; terminate TLS at a proxy",
    "service_envelope": "request envelopes (kserve, kservev2, json) are not implemented; "
                        "KServe v1 is served at /v1/models/{model}:predict",
}

# TorchServe's default: any http(s) URL passes this check; the address rules
# (serving/routing/addresses.py) still refuse internal and metadata hosts.
DEFAULT_ALLOWED_URLS = ("file://.*|http(s)?://.*",)
# The most batches in flight to one worker by default: the one it runs and up to 15 sent ahead,
# as many as its recent batch times say run within ~4 ms (at least one; see
# serving/workers/sendahead.py).
DEFAULT_MAX_INFLIGHT_BATCHES = 16


class Address(BaseModel):
    """A listening address parsed from TorchServe's `http://host:port` form."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str
    port: int = Field(ge=0, le=65535)

    @classmethod
    def parse(cls, value: str) -> Address:
        parts = urlsplit(value if "://" in value else f"http://{value}")
        if parts.scheme != "http":
            raise ValueError(f"{value!r}: only http:// addresses are served (TLS belongs "
                             "to a proxy in front of the server)")
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"{value!r} is not of the form http://host:port")
        return cls(host=parts.hostname, port=parts.port)

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}"


class Settings(BaseModel):
    """Server-wide settings. Field names are TorchServe's config.properties keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inference_address: Address = Address(host="127.0.0.1", port=8080)
    management_address: Address = Address(host="127.0.0.1", port=8081)
    metrics_address: Address = Address(host="127.0.0.1", port=8082)
    # TorchServe's gRPC APIs (serving/gateway/grpc/): a host (no scheme) and a port each.
    grpc_inference_address: str = "127.0.0.1"
    grpc_management_address: str = "127.0.0.1"
    grpc_inference_port: int = Field(7070, ge=0, le=65535)
    grpc_management_port: int = Field(7071, ge=0, le=65535)
    # ms a connection may live before the server asks the client to reconnect, and ms it then
    # has to finish its calls; None: no bound (TorchServe's default).
    grpc_inference_max_connection_age_ms: int | None = Field(None, ge=1)
    grpc_management_max_connection_age_ms: int | None = Field(None, ge=1)
    grpc_inference_max_connection_age_grace_ms: int | None = Field(None, ge=0)
    grpc_management_max_connection_age_grace_ms: int | None = Field(None, ge=0)
    enable_grpc_ssl: bool = False  # TLS on both gRPC listeners, with the two files below
    certificate_file: Path | None = None  # PEM certificate chain (gRPC only)
    private_key_file: Path | None = None  # PEM private key (gRPC only)
    model_store: Path | None = None
    load_models: list[str] = Field(default_factory=list)
    models: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    default_workers_per_model: int = Field(1, ge=0)
    job_queue_size: int = Field(100, ge=1)
    # Batches in flight to one worker when neither its handler (`can_overlap`) nor the model
    # config (`maxInflightBatches`) says: the one it runs and full ones sent ahead, as many as
    # its batch times allow (see DEFAULT_MAX_INFLIGHT_BATCHES).
    default_max_inflight_batches: int = Field(DEFAULT_MAX_INFLIGHT_BATCHES, ge=1)
    # Bytes of request bodies one model version's queue may hold; beyond it, 503 at once.
    job_queue_max_bytes: int = Field(256 * 1024**2, ge=1)
    # Bound on minWorkers/maxWorkers/initial_workers/min_worker/max_worker of one model.
    max_workers_per_model: int = Field(default_factory=lambda: default_max_workers(), ge=1)
    default_response_timeout: int = Field(120, ge=1)
    default_startup_timeout: int = Field(120, ge=1)
    max_request_size: int = Field(6553500, ge=1)
    max_response_size: int = Field(6553500, ge=1)
    max_json_depth: int = Field(100, ge=1)  # nesting of JSON bodies; deeper: 400
    max_header_size: int = Field(65536, ge=1024)  # bytes of all request headers; more: 431
    max_headers: int = Field(100, ge=1)  # request headers; more: 431
    max_request_line: int = Field(8192, ge=64)  # bytes of the URL (path and query); more: 414
    max_kserve_instances: int = Field(1000, ge=1)  # KServe v1 instances per request
    max_management_request_size: int = Field(1048576, ge=1)  # management bodies; more: 413
    allowed_urls: tuple[str, ...] = DEFAULT_ALLOWED_URLS
    # Remote registration (`url=http(s)://...`): see docs/security/remote-registration.md.
    allowed_url_networks: tuple[IPNetwork, ...] = ()  # internal networks downloads may reach
    max_model_download_size: int = Field(10 * 1024**3, ge=1)  # bytes
    model_download_timeout: float = Field(900.0, gt=0)  # s for a whole download
    model_download_connect_timeout: float = Field(10.0, gt=0)  # s for one TCP/TLS connect
    enable_model_api: bool = False
    disable_token_authorization: bool = False  # TorchServe 0.12: token authorization is on
    token_expiration_min: float = Field(60.0, gt=0)  # minutes the management/inference keys live
    decode_input_request: bool = True
    limit_max_image_pixels: bool = True  # handlers see it as context.limit_max_image_pixels
    default_service_handler: str | None = None  # for archives without a manifest
    # Bounds on what one archive or model folder may unpack to (docs/security/archives.md).
    max_archive_size: int = Field(20 * 1024**3, ge=1)  # bytes, all entries together
    max_archive_entries: int = Field(10_000, ge=1)  # files and folders
    max_archive_compression_ratio: float = Field(200.0, ge=1)  # per zip entry; tar: whole
    cpu_launcher_enable: bool = False
    cpu_launcher_args: str = ""
    number_of_gpu: int | None = Field(None, ge=0)
    reserved_gateway_cores: int | None = Field(None, ge=0)  # None: 1 on machines of 4+ cores
    drain_timeout: float = Field(30.0, ge=0)  # s that SIGTERM waits for in-flight requests
    compile_cache_dir: Path = Path("~/.cache/serving/compile").expanduser()
    # A testing/ops knob: the CPU features workers act on instead of /proc/cpuinfo's, e.g.
    # "avx2" to see what `auto` chooses on an AVX2-only CPU (serving/optimize/hardware.py).
    cpu_features: str | None = None
    # Where `proc/self/cgroup` and `sys/fs/cgroup` are read (the container's CPU and memory
    # limits); an empty folder turns the cgroup limits off.
    cgroup_root: Path = Path("/")
    worker_ping_interval: float = Field(10.0, gt=0)  # s between pings of an idle worker
    worker_ping_timeout: float = Field(10.0, gt=0)  # s before a silent worker is replaced
    log_level: str = "INFO"
    # Metrics (docs/metrics.md). `prometheus`: /metrics only; `log`/`legacy`: also
    # TorchServe's ts_metrics.log / model_metrics.log lines every metric_time_interval.
    enable_metrics_api: bool = True  # false: no /metrics and nothing recorded
    metrics_mode: Literal["prometheus", "log", "legacy"] = "prometheus"
    metrics_config: Path | None = None  # a TorchServe metrics.yaml
    metric_time_interval: float = Field(60.0, gt=0)  # s between system-metric samples
    disable_system_metrics: bool = False
    # Logs (docs/logging.md): LOG_LOCATION / METRICS_LOCATION from the environment.
    log_location: Path | None = None  # ts_log.log and access_log.log go there
    metrics_location: Path | None = None  # ts_metrics.log, model_metrics.log (log mode)
    log_config: Path | None = None  # a Python logging config (dictConfig YAML/JSON or INI)
    access_log: bool = False  # a line per HTTP request and gRPC call (TorchServe's access_log.log)
    access_log_format: Literal["text", "json"] = "text"
    log_max_bytes: int = Field(100 * 1024**2, ge=0)  # rotate a log file past this; 0: never
    log_backup_count: int = Field(5, ge=0)  # rotated files kept

    @field_validator("inference_address", "management_address", "metrics_address",
                     mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        return Address.parse(value) if isinstance(value, str) else value

    @field_validator("cpu_features")
    @classmethod
    def _known_cpu_features(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = {n.strip().lower() for n in value.replace(",", " ").split() if n.strip()}
        unknown = sorted(names - RELEVANT_CPU_FLAGS)
        if unknown:
            raise ValueError(f"unknown CPU feature(s) {', '.join(unknown)} (known: "
                             f"{', '.join(sorted(RELEVANT_CPU_FLAGS))})")
        return ",".join(sorted(names))

    @field_validator("metrics_config", "log_config")
    @classmethod
    def _existing_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not value.is_file():
                raise ValueError(f"no file {str(value)!r}")
            value = value.resolve()  # workers read it from the model's folder
        return value

    @field_validator("grpc_inference_address", "grpc_management_address")
    @classmethod
    def _grpc_host(cls, value: str) -> str:
        host = value.strip().removeprefix("[").removesuffix("]")
        bad = not host or "/" in host or " " in host
        if ":" in host and not bad:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                bad = True
        if bad:
            raise ValueError(f"{value!r}: expected a host name or IP address, without scheme "
                             "or port (the port is grpc_*_port)")
        return host

    @field_validator("certificate_file", "private_key_file")
    @classmethod
    def _pem_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no file {str(value)!r}")
        return value

    @field_validator("model_store")
    @classmethod
    def _model_store(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a folder" if value.exists()
                             else f"no folder {str(value)!r}")
        return value

    @field_validator("load_models", mode="before")
    @classmethod
    def _load_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("allowed_urls", mode="before")
    @classmethod
    def _allowed_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("allowed_urls")
    @classmethod
    def _allowed_url_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression ({e})") from None
        return value

    @field_validator("allowed_url_networks", mode="before")
    @classmethod
    def _allowed_url_networks(cls, value: Any) -> Any:
        return parse_networks(value) if isinstance(value, str | list | tuple) else value

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"not valid JSON ({e.msg} at character {e.pos})") from e
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}")
        return value.upper()

    @model_validator(mode="after")
    def _grpc_tls(self) -> Settings:
        files = (self.certificate_file, self.private_key_file)
        if self.enable_grpc_ssl and None in files:
            raise ValueError("enable_grpc_ssl needs certificate_file and private_key_file")
        if not self.enable_grpc_ssl and any(files):
            raise ValueError("certificate_file/private_key_file serve only gRPC, with "
                             "enable_grpc_ssl=true; REST TLS belongs to a proxy in front")
        return self

    @model_validator(mode="after")
    def _workers_bounded(self) -> Settings:
        if self.default_workers_per_model > self.max_workers_per_model:
            raise ValueError(f"default_workers_per_model ({self.default_workers_per_model}) "
                             f"is above max_workers_per_model ({self.max_workers_per_model})")
        return self


def default_max_workers() -> int:
    """4 workers per CPU this process may run on, at least 8: more is a typo, not a plan."""
    return max(8, 4 * len(os.sched_getaffinity(0)))


def build_settings(properties_file: Path | None, overrides: dict[str, Any],
                   environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from a TorchServe `config.properties` (optional), CLI overrides on top, and
    the environment over both (TorchServe's order): `TS_<KEY>` when `enable_envvars_config`
    is true, as in TorchServe, and this server's own `SERVING_<KEY>` always."""
    values: dict[str, Any] = {}
    source = "command line"
    envvars = False
    if properties_file is not None:
        source = str(properties_file)
        values.update(_from_properties(properties_file))
        envvars = _truthy(values.pop(ENVVARS_KEY, "false"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if environ is not None:
        envvars = envvars or _truthy(environ.get(f"TS_{ENVVARS_KEY.upper()}", "false"))
        from_env = environment_values(environ, ts_prefix=envvars)
        if from_env:
            source = f"{source} and the environment ({', '.join(sorted(from_env.values()))})"
        values.update({key: environ[name] for key, name in from_env.items()})
        if "model_store" in from_env:
            values["model_store"] = Path(values["model_store"]).expanduser()
    try:
        return Settings(**values)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e)}") from None


# Variables a process sets for itself or its workers, or that name files, not settings.
_NOT_SETTINGS = frozenset({"config_file", ENVVARS_KEY})


def environment_values(environ: Mapping[str, str], ts_prefix: bool) -> dict[str, str]:
    """{settings key: variable name} for the variables that set a key: `SERVING_<KEY>`, and
    `TS_<KEY>` when `ts_prefix`; `SERVING_` wins over `TS_`. Other variables with these
    prefixes are left alone (Kubernetes adds `<SERVICE>_PORT` and the like for every
    Service, so a Service named `serving` or `ts` must not stop the start-up)."""
    found: dict[str, str] = {}
    prefixes = ("TS_", "SERVING_") if ts_prefix else ("SERVING_",)
    for prefix in prefixes:
        for name in environ:
            key = name[len(prefix):].lower() if name.startswith(prefix) else ""
            if key in Settings.model_fields and key not in _NOT_SETTINGS:
                found[key] = name
    return found


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() == "true"


def _from_properties(path: Path) -> dict[str, Any]:
    try:
        raw = read_properties(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in UNSUPPORTED_TORCHSERVE_KEYS:
            raise ConfigError(f"{path}: {key}: {UNSUPPORTED_TORCHSERVE_KEYS[key]}")
        if key in IGNORED_TORCHSERVE_KEYS:
            log.info("%s: %s is a TorchServe setting with no effect here", path, key)
            continue
        if key not in Settings.model_fields and key != ENVVARS_KEY:
            # TorchServe ignores keys it does not know; a file written for it (or for a newer
            # release) must start here too. One warning per key, so a typo stays visible.
            log.warning("%s: unknown key %r is ignored (neither a TorchServe nor a serving "
                        "setting)", path, key)
            continue
        values[key] = value
    for key in ("metrics_config", "log_location", "metrics_location"):
        if key in values:
            values[key] = Path(values[key]).expanduser()
    if "model_store" in values:
        # TorchServe resolves a relative model_store against the working directory.
        values["model_store"] = Path(values["model_store"]).expanduser()
    return values


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: `key: message (got value)`."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "settings"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        got = item.get("input")
        suffix = f" (got {got!r})" if isinstance(got, str | int | float) else ""
        lines.append(f"{where}: {message}{suffix}")
    return "; ".join(lines)

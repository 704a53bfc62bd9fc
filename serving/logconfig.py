"""Logging of the server process: where lines go, their format, the access log, rotation.

Without `--log-config`: the server's lines go to stderr, and with `LOG_LOCATION` also to
`ts_log.log` there (the workers append theirs to `model_log.log` there themselves, rotated
under a lock they share: serving/workers/sharedlog.py); the
access log (`access_log`) goes to `access_log.log` under `LOG_LOCATION`, else to stderr.
Files rotate past `log_max_bytes` (TorchServe's log4j2 rolls at 100 MB, keeping 5).
`--log-config` replaces all of that with the user's own configuration; the loggers are
`serving` (the server), `serving.access` (the access log), `uvicorn.error`.
"""

from __future__ import annotations

import configparser
import json
import logging
import logging.config
import logging.handlers
import sys
from pathlib import Path

import yaml

from serving.errors import ConfigError
from serving.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FORMAT = "%(asctime)s ACCESS_LOG - %(message)s"
ACCESS_LOGGER = "serving.access"


def configure_logging(settings: Settings) -> None:
    if settings.log_config is not None:
        _apply_file(settings.log_config)
    else:
        _default(settings)
    # Each uvicorn server (inference, management, metrics) would print its own copy of
    # "Started server process" and "Shutting down"; the server logs those once itself.
    uvicorn_log = logging.getLogger("uvicorn.error")
    if uvicorn_log.getEffectiveLevel() < logging.WARNING and settings.log_level != "DEBUG":
        uvicorn_log.setLevel(logging.WARNING)


def _default(settings: Settings) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):  # the bootstrap handler of the CLI
        root.removeHandler(handler)
        handler.close()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(stderr)
    root.setLevel(settings.log_level)
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.INFO)
    access.propagate = False  # TorchServe keeps access lines out of ts_log.log
    if settings.log_location is not None:
        folder = _folder(settings.log_location, "LOG_LOCATION")
        root.addHandler(rotating(folder / "ts_log.log", settings, FORMAT))
        access.addHandler(rotating(folder / "access_log.log", settings, ACCESS_FORMAT))
    else:
        to_stderr = logging.StreamHandler(sys.stderr)
        to_stderr.setFormatter(logging.Formatter(ACCESS_FORMAT))
        access.addHandler(to_stderr)


def rotating(path: Path, settings: Settings, fmt: str) -> logging.Handler:
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=settings.log_max_bytes, backupCount=settings.log_backup_count,
        encoding="utf-8")
    handler.setFormatter(logging.Formatter(fmt))
    return handler


def _folder(path: Path, what: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what}: cannot create {path}: {e.strerror}") from None
    return path


def _apply_file(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".xml":
        raise ConfigError(f"log_config: {path} looks like a log4j2 configuration (TorchServe's "
                          "Java logging); give a Python logging configuration: a dictConfig "
                          "in YAML or JSON, or an INI file")
    try:
        if suffix in (".yaml", ".yml", ".json"):
            text = path.read_text(encoding="utf-8")
            config = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
            if not isinstance(config, dict):
                raise ValueError("expected a logging dictConfig mapping")
            config.setdefault("version", 1)
            config.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(config)
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError,
            RuntimeError, configparser.Error, yaml.YAMLError) as e:
        raise ConfigError(f"log_config: {path}: {e}") from None

"""Derived benchmark archives carry their settings, with or without a config file of their own."""

from __future__ import annotations

from pathlib import Path

from bench.archive import build_noop_mar, derive_archive
from serving.handlers.archive import ArchiveLimits, unpack
from serving.handlers.modelconfig import read_model_yaml


def _config_of(mar: Path, into: Path) -> dict[str, object]:
    archive = unpack(mar, into, ArchiveLimits())
    return read_model_yaml(archive.model_dir, archive.manifest.config_file)


def test_settings_reach_an_archive_built_without_a_config_file(tmp_path: Path) -> None:
    noop = build_noop_mar(tmp_path)  # the real archiver, no --config-file
    assert _config_of(noop, tmp_path / "plain") == {}
    derived = derive_archive(noop, "noop-deadline", {"clientTimeoutInMills": 2000})
    assert _config_of(derived, tmp_path / "derived") == {"clientTimeoutInMills": 2000}


def test_settings_merge_over_an_existing_config_file(tmp_path: Path) -> None:
    noop = build_noop_mar(tmp_path)
    first = derive_archive(noop, "noop-a", {"batchSize": 4, "maxBatchDelay": 7})
    second = derive_archive(first, "noop-b", {"batchSize": 8})
    assert _config_of(second, tmp_path / "b") == {"batchSize": 8, "maxBatchDelay": 7}

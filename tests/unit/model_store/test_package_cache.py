"""The default store's package cache: which entries pruning keeps, and that it never removes
one while another build holds the cache (real folders, a real second process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from model_store import optimized, package_cache
from model_store.build import main, used_entries

KEYS = [f"{i:x}" * 64 for i in range(1, 6)]  # five distinct 64-hex-digit keys


def entry(cache: Path, model: str, key: str, age_s: float) -> Path:
    """A complete entry as a build leaves it, last used `age_s` seconds ago."""
    path = package_cache.entry_path(cache, model, key)
    path.mkdir(parents=True)
    for name in optimized.PACKAGE_FILES:
        (path / name).write_bytes(name.encode())
    (path / "report.json").write_text(json.dumps({"chosen": "eager"}))
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def names(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()}


def test_prune_keeps_the_used_entries_and_the_newest_others_per_model(tmp_path: Path) -> None:
    cache = tmp_path / ".cache"
    minilm = [entry(cache, "minilm", key, age_s=100 * i) for i, key in enumerate(KEYS)]
    resnet = [entry(cache, "resnet50", key, age_s=100 * i) for i, key in enumerate(KEYS[:2])]
    leftover = cache / f"{package_cache.STAGING_PREFIX}minilm-abcd1234"
    (leftover / "model").mkdir(parents=True)
    (cache / "notes.txt").write_text("not an entry")
    used = {minilm[4].name}  # the oldest: what the store's archive was built with

    removed = package_cache.prune(cache, used, keep=2)

    assert removed is not None
    assert {p.name for p in removed} == {minilm[2].name, minilm[3].name, leftover.name}
    assert names(cache) == {minilm[0].name, minilm[1].name, minilm[4].name,
                            resnet[0].name, resnet[1].name, "notes.txt",
                            package_cache.LOCK_FILE}
    assert (minilm[4] / "report.json").is_file()  # kept whole
    assert package_cache.prune(cache, used, keep=0) is not None
    assert names(cache) == {minilm[4].name, "notes.txt", package_cache.LOCK_FILE}


def test_prune_of_a_missing_cache_or_a_bad_keep(tmp_path: Path) -> None:
    assert package_cache.prune(tmp_path / "absent", set()) == []
    with pytest.raises(ValueError, match="keep must be at least 0"):
        package_cache.prune(tmp_path, set(), keep=-1)


HOLDER = """
import sys, time
from pathlib import Path
from model_store import package_cache
with package_cache.using(Path(sys.argv[1])):
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_prune_removes_nothing_while_another_build_holds_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / ".cache"
    old = [entry(cache, "minilm", key, age_s=100 * i) for i, key in enumerate(KEYS)]
    staging = cache / f"{package_cache.STAGING_PREFIX}minilm-writing1"
    staging.mkdir()  # another build's package, being written
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(cache)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert package_cache.prune(cache, set(), keep=0) is None
        assert all(p.is_dir() for p in old) and staging.is_dir()
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    removed = package_cache.prune(cache, set(), keep=0)
    assert removed is not None and len(removed) == len(old) + 1
    assert names(cache) == {package_cache.LOCK_FILE}


def plain_archive(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json",
                     json.dumps({"model": {"modelName": path.stem, "handler": "h.py",
                                           "configFile": "model-config.yaml"}}))
        mar.writestr("model-config.yaml", "minWorkers: 1\n")
        mar.writestr("h.py", "def handle(data, context):\n    return data\n")
    return path


def test_a_cache_hit_marks_its_entry_as_the_newest(tmp_path: Path) -> None:
    cache = tmp_path / ".cache"
    older, newer = (entry(cache, "tiny", KEYS[0], age_s=1000),
                    entry(cache, "tiny", KEYS[1], age_s=10))
    plain = plain_archive(tmp_path / "tiny.mar")
    out = tmp_path / "out" / "tiny.mar"
    out.parent.mkdir()

    assert optimized.precompiled_archive(plain, out, cache, KEYS[0], threads=1) == "hit"

    with zipfile.ZipFile(out) as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
        assert config["optimization"]["precompiled"] == optimized.PACKAGE_FILES[0]
        assert mar.read(optimized.PACKAGE_FILES[0]) == optimized.PACKAGE_FILES[0].encode()
    removed = package_cache.prune(cache, set(), keep=1)
    assert removed == [newer]
    assert older.is_dir()


def test_used_entries_come_from_the_archives_stamps(tmp_path: Path) -> None:
    (tmp_path / "minilm.mar.key").write_text(f"precompiled {KEYS[0]}")
    (tmp_path / "resnet50.mar.key").write_text(f"precompiled {KEYS[1]}")
    (tmp_path / "noop.mar.key").write_text("plain")
    assert used_entries(tmp_path) == {package_cache.entry_name("minilm", KEYS[0]),
                                      package_cache.entry_name("resnet50", KEYS[1])}


def test_keep_below_zero_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--out", str(tmp_path), "--keep", "-1"])
    assert exited.value.code == 2
    assert "--keep must be at least 0, got -1" in capsys.readouterr().err

"""The precompiled-package cache of the default store: entry names, the lock builds share, and
pruning.

An entry is `<cache>/<model>-<first 24 hex digits of its key>/`: it appears whole (staged under
`.staging-<model>-*` and renamed into place) or not at all. Each build holds the cache's lock
shared while it reads or writes an entry; pruning takes it exclusively and gives up at once if
another build holds it, so an entry is never removed under a build that is writing or reading
it. An entry's modification time is when a build last used it (see `mark_used`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path

log = logging.getLogger("model_store.build")

LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"
KEY_CHARS = 24
DEFAULT_KEEP = 2  # older entries kept per model besides the ones the store's archives use
_ENTRY = re.compile(rf"^(?P<model>.+)-[0-9a-f]{{{KEY_CHARS}}}$")


def entry_name(model: str, key: str) -> str:
    return f"{model}-{key[:KEY_CHARS]}"


def entry_path(cache: Path, model: str, key: str) -> Path:
    return cache / entry_name(model, key)


def mark_used(entry: Path) -> None:
    """Record that a build used `entry` now: pruning keeps the most recently used."""
    os.utime(entry)


@contextlib.contextmanager
def _locked(cache: Path, operation: int) -> Iterator[bool]:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, operation)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def using(cache: Path) -> Iterator[None]:
    """Held (shared, so builds run side by side) while a build reads or writes entries."""
    with _locked(cache, fcntl.LOCK_SH):
        yield


def prune(cache: Path, used: Collection[str], keep: int = DEFAULT_KEEP) -> list[Path] | None:
    """Remove entries but the `used` ones (entry names) and, per model, the `keep` most
    recently used others; and staging folders that builds left behind when interrupted.
    Returns what was removed, or None when another build holds the cache (nothing removed)."""
    if keep < 0:
        raise ValueError(f"keep must be at least 0, got {keep}")
    if not cache.is_dir():
        return []
    with _locked(cache, fcntl.LOCK_EX | fcntl.LOCK_NB) as alone:
        if not alone:
            log.info("package cache %s is in use by another build: not pruned this time", cache)
            return None
        removed = [p for p in cache.iterdir()
                   if p.is_dir() and p.name.startswith(STAGING_PREFIX)]
        by_model: dict[str, list[Path]] = {}
        for path in cache.iterdir():
            match = _ENTRY.match(path.name)
            if match and path.is_dir() and path.name not in used:
                by_model.setdefault(match["model"], []).append(path)
        for entries in by_model.values():
            entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
            removed.extend(entries[keep:])
        for path in removed:
            shutil.rmtree(path)
            log.info("package cache: removed %s", path.name)
        return removed

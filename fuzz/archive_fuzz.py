"""atheris harness: `unpack` on mutated zip/tar bytes may raise only ArchiveError and may write
nothing outside its work folder.

    python fuzz/archive_fuzz.py fuzz/corpus/archive -runs=5000
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

from fuzz.known import tolerate_known

with atheris.instrument_imports(include=["serving", "zipfile", "tarfile"]):
    from serving.errors import ArchiveError
    from serving.handlers.archive import ArchiveLimits, unpack

# root/a/b/c/{store,work}: a `..` escape from an extracted folder lands in a level we watch.
ROOT = Path(tempfile.mkdtemp(prefix="archive-fuzz-"))
NEST = ROOT / "a" / "b" / "c"
STORE = NEST / "store"
WORK = NEST / "work"
EXPECTED = {ROOT: {"a"}, ROOT / "a": {"b"}, ROOT / "a" / "b": {"c"}, NEST: {"store", "work"}}
NAMES = ("model.mar", "model.tar.gz")


def check_contained() -> None:
    for folder, names in EXPECTED.items():
        found = set(os.listdir(folder))
        if found != names:
            raise AssertionError(f"written outside the work folder: {folder}: {found - names}")
    for dirpath, dirnames, filenames in os.walk(WORK):
        for name in dirnames + filenames:
            real = os.path.realpath(os.path.join(dirpath, name))
            if os.path.commonpath([real, str(WORK)]) != str(WORK):
                raise AssertionError(f"{os.path.join(dirpath, name)} resolves outside: {real}")


@tolerate_known
def test_one_input(data: bytes) -> None:
    archive = STORE / NAMES[len(data) % 2]
    archive.write_bytes(data)
    try:
        unpacked = unpack(archive, WORK, ArchiveLimits(max_size=64 << 20))
    except ArchiveError:
        unpacked = None
    check_contained()
    if unpacked is not None and unpacked.extracted_to is not None:
        shutil.rmtree(unpacked.extracted_to)
    if any(WORK.iterdir()):
        raise AssertionError(f"unpack left files behind: {list(WORK.iterdir())}")
    archive.unlink()


def main() -> None:
    STORE.mkdir(parents=True)
    WORK.mkdir()
    try:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()

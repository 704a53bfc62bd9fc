"""model_log.log's handler: several real processes write one file that rotates; every line
arrives once, whole, in a file no larger than the limit."""

from __future__ import annotations

import logging
import multiprocessing
import re
from collections import Counter
from pathlib import Path

from serving.workers.sharedlog import SharedRotatingFileHandler

WRITERS, LINES, MAX_BYTES = 4, 400, 2000
LINE = re.compile(r"^writer-(\d) line-(\d+) x+$")


def write_lines(path: str, writer: int) -> None:
    handler = SharedRotatingFileHandler(path, MAX_BYTES, backup_count=1000)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger(f"writer-{writer}")
    log.propagate = False
    log.addHandler(handler)
    for i in range(LINES):
        log.warning("writer-%d line-%d %s", writer, i, "x" * (i % 50 + 1))
    handler.close()


def test_processes_writing_one_file_lose_and_repeat_no_line(tmp_path: Path) -> None:
    path = tmp_path / "model_log.log"
    spawn = multiprocessing.get_context("spawn")
    writers = [spawn.Process(target=write_lines, args=(str(path), n)) for n in range(WRITERS)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=120)
        assert p.exitcode == 0
    files = sorted(tmp_path.glob("model_log.log*"))
    assert len(files) > 10  # ~70 kB through 2 kB files: it rotated many times
    assert all(f.stat().st_size <= MAX_BYTES for f in files)
    lines = [line for f in files for line in f.read_text().splitlines()]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m][:3]
    seen = Counter((m.group(1), m.group(2)) for m in parsed if m)
    assert len(seen) == WRITERS * LINES and set(seen.values()) == {1}


def test_oldest_files_beyond_backup_count_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "model_log.log"
    handler = SharedRotatingFileHandler(path, max_bytes=100, backup_count=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(30):
        handler.handle(logging.makeLogRecord({"msg": f"line {i:02d} " + "y" * 30}))
    handler.close()
    assert sorted(p.name for p in tmp_path.glob("model_log.log*")) == [
        "model_log.log", "model_log.log.1", "model_log.log.2"]
    assert "line 29" in path.read_text()
    assert "line 00" not in "".join(p.read_text() for p in tmp_path.glob("model_log.log*"))


def test_no_rotation_when_max_bytes_is_zero(tmp_path: Path) -> None:
    path = tmp_path / "model_log.log"
    handler = SharedRotatingFileHandler(path, max_bytes=0, backup_count=5)
    for i in range(50):
        handler.handle(logging.makeLogRecord({"msg": f"line {i}"}))
    handler.close()
    assert [p.name for p in tmp_path.glob("model_log.log*")] == ["model_log.log"]
    assert len(path.read_text().splitlines()) == 50

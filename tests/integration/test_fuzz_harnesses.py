"""A short, seeded run of each atheris harness in fuzz/ (the long runs are in
docs/security/fuzzing.md): a crash, or an exception a parser should not raise, fails it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = 3000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    subprocess.run([sys.executable, str(ROOT / "fuzz" / "make_corpus.py"), str(folder)],
                   check=True, capture_output=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return folder


@pytest.mark.parametrize("harness", ["ipc", "bodies", "archive", "oip"])
def test_harness_short_run(harness: str, corpus: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FUZZ_KNOWN"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / f"{harness}_fuzz.py"), str(corpus / harness),
         f"-runs={RUNS}", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # libFuzzer checks the run budget between mutation rounds, so it may finish a few runs
    # past it ("Done 3003 runs"): what matters is that it ran the whole budget and ended.
    done = re.search(r"^Done (\d+) runs", out, re.MULTILINE)
    assert done is not None, out[-2000:]
    assert int(done.group(1)) >= RUNS, out[-2000:]

"""config.properties' `models=` JSON with two versions of one model: `defaultVersion` picks the
version that answers /predictions/{name}, `runtime` is honoured or a clear start-up error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.archives import build_mar
from tests.support.server import ROOT, ServerProcess, free_port


def two_versions(store: Path, name: str) -> None:
    """Archives `{name}-1.0.mar` and `{name}-2.0.mar`: the echo handler, whose answer shows its
    version's model-config.yaml (`tag: v1` / `tag: v2`)."""
    for version in ("1.0", "2.0"):
        build_mar(store, name, "echo_handler.py", version=version,
                  config=f"tag: v{version[0]}\n", file_name=f"{name}-{version}.mar")


def entry(name: str, version: str, **extra: object) -> dict[str, object]:
    return {"marName": f"{name}-{version}.mar", "minWorkers": 1, **extra}


def tag(server: ServerProcess, path: str) -> str:
    r = server.inference.post(path, json={})
    assert r.status_code == 200, r.text
    return str(r.json()["yaml"]["tag"])


def test_default_version_and_runtime_from_models_json(store: Path, tmp_path: Path) -> None:
    two_versions(store, "newer")
    two_versions(store, "older")
    # Each model lists its default version last, so that neither "the first one loaded" nor
    # "the last one loaded" can pass for both models.
    models = {
        "newer": {"1.0": entry("newer", "1.0"),
                  "2.0": entry("newer", "2.0", defaultVersion=True, runtime="python3")},
        "older": {"2.0": entry("older", "2.0", runtime="python"),
                  "1.0": entry("older", "1.0", defaultVersion=True)},
    }
    cfg = tmp_path / "config.properties"
    cfg.write_text(f"model_store={store}\nmodels={json.dumps(models)}\n")
    with ServerProcess(tmp_path / "log", ts_config=cfg) as srv:
        srv.wait_ready(models=("newer", "older"))
        assert tag(srv, "/predictions/newer") == "v2"
        assert tag(srv, "/predictions/older") == "v1"
        assert tag(srv, "/predictions/newer/1.0") == "v1"
        assert tag(srv, "/predictions/older/2.0") == "v2"
        described = srv.management.get("/models/newer").json()
        assert [(d["modelVersion"], d["runtime"]) for d in described] == [("2.0", "python3")]
        every = {d["modelVersion"]: d["runtime"]
                 for d in srv.management.get("/models/older/all").json()}
        assert every == {"1.0": "python", "2.0": "python"}
        # The default stays a choice the management API can change.
        assert srv.management.put("/models/newer/1.0/set-default").status_code == 200
        assert tag(srv, "/predictions/newer") == "v1"


def start_fails(tmp_path: Path, models: dict[str, object]) -> str:
    cfg = tmp_path / "config.properties"
    cfg.write_text(f"model_store={tmp_path}\nmodels={json.dumps(models)}\n")
    result = subprocess.run(
        [sys.executable, "-m", "serving", "start", "--disable-token-auth", "--ts-config",
         str(cfg), "--inference-address", f"http://127.0.0.1:{free_port()}",
         "--management-address", f"http://127.0.0.1:{free_port()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    return result.stderr


@pytest.mark.parametrize("runtime", ["LSP", "cpp", "java", 3])
def test_a_runtime_that_is_not_python_stops_the_start_naming_the_model(
        tmp_path: Path, runtime: object) -> None:
    stderr = start_fails(tmp_path, {"ranker": {"1.0": {"marName": "ranker.mar",
                                                      "runtime": runtime}}})
    assert f"models: ranker/1.0: runtime {runtime!r} cannot serve model ranker" in stderr
    assert "python or python3" in stderr


def test_two_default_versions_stop_the_start(tmp_path: Path) -> None:
    stderr = start_fails(tmp_path, {"m": {"1.0": {"marName": "a.mar", "defaultVersion": True},
                                          "2.0": {"marName": "b.mar", "defaultVersion": True}}})
    assert "models: m: defaultVersion is true for versions 1.0, 2.0" in stderr

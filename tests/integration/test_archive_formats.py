"""Archive formats and unsafe archives, registered on a real server."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.support.archives import HANDLERS, build_mar
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text("default_service_handler=fn_handler:handle\n")
    with ServerProcess(tmp_path_factory.mktemp("logs") / "log", model_store=store,
                       ts_config=cfg) as srv:
        srv.wait_ready()
        yield srv


def predict_ok(server: ServerProcess, name: str) -> dict:
    r = server.inference.post(f"/predictions/{name}", content=b"x")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("fmt", ["tgz", "no-archive", "zip-store"])
def test_archiver_formats(server: ServerProcess, store: Path, fmt: str):
    name = f"fmt-{fmt}"
    path = build_mar(store, name, "fn_handler.py", archive_format=fmt)
    r = server.management.post("/models", params={"url": path.name})
    assert r.status_code == 200, r.text
    assert predict_ok(server, name)["model"] == name


def test_old_manifest_and_no_manifest(server: ServerProcess, store: Path):
    handler = (HANDLERS / "fn_handler.py").read_bytes()
    with zipfile.ZipFile(store / "legacy.mar", "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(
            {"specificationVersion": "1.0", "model": {"modelName": "legacy",
                                                      "handler": "fn_handler.py"}}))
        zf.writestr("fn_handler.py", handler)
    server.management.post("/models", params={"url": "legacy.mar"}).raise_for_status()
    assert server.management.get("/models/legacy").json()[0]["modelVersion"] == "1.0"
    assert predict_ok(server, "legacy")["form"] == "handle"

    with zipfile.ZipFile(store / "bare.mar", "w") as zf:
        zf.writestr("fn_handler.py", handler)
    server.management.post("/models", params={"url": "bare.mar"}).raise_for_status()
    described = server.management.get("/models/bare").json()[0]
    assert described["handler"] == "fn_handler:handle"
    assert predict_ok(server, "bare")["model"] == "bare"


@pytest.mark.parametrize("evil", ["../../outside.py", "/tmp/serving-test-abs-outside.py"])
def test_unsafe_archive_is_refused_and_nothing_written(server: ServerProcess, store: Path,
                                                       evil: str):
    archive = store / "evil.mar"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(
            {"model": {"modelName": "evil", "handler": "fn_handler.py"}}))
        zf.writestr("fn_handler.py", (HANDLERS / "fn_handler.py").read_bytes())
        zf.writestr(evil, b"print('pwned')")
    r = server.management.post("/models", params={"url": "evil.mar"})
    assert r.status_code == 400
    assert r.json()["type"] == "InvalidModelArchiveException"
    assert "refusing to extract" in r.json()["message"]
    # Where a relative escape would land is checked in tests/unit/handlers/test_archive.py.
    assert not Path("/tmp/serving-test-abs-outside.py").exists()
    assert server.management.get("/models/evil").status_code == 404
    assert server.inference.get("/ping").json() == {"status": "Healthy"}

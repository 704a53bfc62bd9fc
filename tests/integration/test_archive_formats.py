"""Archive formats and unsafe archives, registered on a real server."""

from __future__ import annotations

import io
import json
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support.archives import HANDLERS, build_mar
from tests.support.hostile import path_max_link_chain
from tests.support.server import ServerProcess

MAX_ENTRIES = 200  # set in the server's config.properties below


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text("default_service_handler=fn_handler:handle\n"
                   f"max_archive_entries={MAX_ENTRIES}\n")
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


def model_files(name: str) -> dict[str, bytes]:
    manifest = {"model": {"modelName": name, "handler": "fn_handler.py"}}
    return {"MAR-INF/MANIFEST.json": json.dumps(manifest).encode(),
            "fn_handler.py": (HANDLERS / "fn_handler.py").read_bytes()}


def zip_with_link(path: Path, outside: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in model_files("zlink").items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("data/passwd")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")


def tar_with_link_chain(path: Path, outside: Path) -> None:
    # 16 levels up from the extraction folder is the root, then `outside`'s absolute path:
    # lexically the link stays inside, so tarfile's "data" filter would let it through.
    target = "../" * 16 + str(outside).lstrip("/")
    with tarfile.open(path, "w:gz") as tf:
        for name, data in model_files("chain").items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for member in path_max_link_chain(target):
            tf.addfile(member, io.BytesIO(b"x" * member.size) if member.size else None)


def zip_bomb(path: Path, outside: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in model_files("bomb").items():
            zf.writestr(name, data)
        zf.writestr("zeros.bin", bytes(50 * 1024 * 1024))


def zip_with_many_files(path: Path, outside: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in model_files("many").items():
            zf.writestr(name, data)
        for i in range(MAX_ENTRIES + 50):
            zf.writestr(f"vocab/{i}.txt", b"")


@pytest.mark.parametrize(("file_name", "build", "expected"), [
    ("zlink.mar", zip_with_link, ("entry 'data/passwd'", "symbolic link")),
    ("chain.tar.gz", tar_with_link_chain, ("entry 'a'", "symbolic link")),
    ("bomb.mar", zip_bomb, ("entry 'zeros.bin'", "max_archive_compression_ratio")),
    ("many.mar", zip_with_many_files, ("vocab/", f"max_archive_entries ({MAX_ENTRIES} ")),
])
def test_hostile_archive_is_a_400_naming_the_entry(server: ServerProcess, store: Path,
                                                   tmp_path: Path, file_name: str, build,
                                                   expected):
    outside = tmp_path / "outside"
    outside.mkdir()
    build(store / file_name, outside)
    r = server.management.post("/models", params={"url": file_name})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "InvalidModelArchiveException"
    assert all(part in body["message"] for part in expected), body["message"]
    assert file_name in body["message"]
    assert list(outside.iterdir()) == []
    registered = server.management.get("/models").json()["models"]
    assert all(m["modelUrl"] != file_name for m in registered)
    # The server keeps serving: a good archive registers and answers.
    name = f"after-{file_name.split('.')[0]}"
    good = build_mar(store, name, "fn_handler.py")
    assert server.management.post("/models", params={"url": good.name}).status_code == 200
    assert predict_ok(server, name)["model"] == name
    server.check_alive()

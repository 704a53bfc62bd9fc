"""Registration by http:// URL on a real server, from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.archives import build_mar
from tests.support.fileserver import FileServer, Route
from tests.support.server import ServerProcess

LIMIT = 200_000  # max_model_download_size of the opted-in server
TIMEOUT = 5  # its model_download_timeout, seconds


@pytest.fixture(scope="module")
def mar_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    build = tmp_path_factory.mktemp("build")
    data = build_mar(build, "fn", "fn_handler.py").read_bytes()
    assert len(data) < LIMIT
    return data


@pytest.fixture(scope="module")
def files(mar_bytes: bytes) -> Iterator[FileServer]:
    with FileServer() as fs:
        fs.routes.update({
            "/models/fn.mar": Route(mar_bytes),
            "/models/again.mar": Route(mar_bytes),
            "/models/hop.mar": Route(status=302, headers={"Location": "/models/fn.mar"}),
            "/other/fn.mar": Route(mar_bytes),
            "/models/big.mar": Route(b"x" * (LIMIT + 50_000), declare_length=False),
            "/models/declared.mar": Route(b"x" * (LIMIT + 1)),
            "/models/stall.mar": Route(b"x" * 5000, stall_after=100),
            "/models/to-metadata.mar": Route(status=302, headers={
                "Location": "http://169.254.169.254/latest/fn.mar"}),
            "/models/missing.mar": Route(b"gone", status=404),
            "/models/notazip.mar": Route(b"this is not an archive"),
        })
        yield fs


@pytest.fixture(scope="module")
def opted_in(files: FileServer, store: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that may download from 127.0.0.1, under /models/ only (and 169.254.169.254,
    so that a redirect there is judged by the address rules, not by allowed_urls)."""
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text(
        # [.] rather than \\. : config.properties unescapes backslashes, as in Java.
        f"allowed_urls=http://127[.]0[.]0[.]1:{files.port}/models/.*,"
        "http://169[.]254[.]169[.]254/.*\n"
        "allowed_url_networks=127.0.0.1/32\n"
        f"max_model_download_size={LIMIT}\n"
        f"model_download_timeout={TIMEOUT}\n")
    with ServerProcess(tmp_path_factory.mktemp("logs") / "log", model_store=store,
                       ts_config=cfg) as srv:
        srv.wait_ready()
        yield srv


def register(server: ServerProcess, url: str, **params: object):
    # The client's own timeout only turns a hang into a failure; it is far above the setting.
    return server.management.post("/models", params={"url": url, **params}, timeout=120)


def leftovers(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.name.startswith(".download-"))


def test_register_by_url_serves_predictions_and_unregister_deletes_the_file(
        opted_in: ServerProcess, files: FileServer, store: Path):
    url = f"{files.base}/models/fn.mar"
    r = register(opted_in, url, initial_workers=1)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": 'Model "fn" Version: 1.0 registered with 1 initial workers'}
    assert (store / "fn.mar").is_file()
    assert files.requests[-1] == ("/models/fn.mar", f"127.0.0.1:{files.port}")
    assert opted_in.management.get("/models/fn").json()[0]["modelUrl"] == url
    p = opted_in.inference.post("/predictions/fn", content=b"x")
    assert p.status_code == 200 and p.json()["model"] == "fn"

    again = register(opted_in, url)
    assert again.status_code == 409
    assert again.json()["message"] == "Model file already exists fn.mar"

    assert opted_in.management.delete("/models/fn").status_code == 200
    assert not (store / "fn.mar").exists()  # TorchServe deletes a downloaded archive too
    assert leftovers(store) == []


def test_redirect_is_followed_and_rechecked(opted_in: ServerProcess, files: FileServer,
                                            store: Path):
    r = register(opted_in, f"{files.base}/models/hop.mar", model_name="hop")
    assert r.status_code == 200, r.text
    assert (store / "hop.mar").is_file()  # named after the URL asked for, as TorchServe
    assert opted_in.inference.post("/predictions/hop", content=b"x").json()["model"] == "hop"
    assert opted_in.management.delete("/models/hop").status_code == 200


def test_redirect_to_metadata_address_is_refused_before_connecting(
        opted_in: ServerProcess, files: FileServer, store: Path):
    r = register(opted_in, f"{files.base}/models/to-metadata.mar")
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "InvalidArchiveURLException"
    assert "169.254.169.254 is a cloud metadata address" in body["message"]
    assert not (store / "to-metadata.mar").exists() and leftovers(store) == []


def test_url_outside_allowed_urls_is_refused(opted_in: ServerProcess, files: FileServer):
    before = len(files.requests)
    r = register(opted_in, f"{files.base}/other/fn.mar")
    assert r.status_code == 400
    assert r.json()["message"] == (f"Given URL {files.base}/other/fn.mar does not match any "
                                   "allowed URL(s)")
    assert len(files.requests) == before  # refused before any connection


@pytest.mark.parametrize(("path", "status"), [("/models/big.mar", 413),
                                              ("/models/declared.mar", 413),
                                              ("/models/stall.mar", 504),
                                              ("/models/missing.mar", 400),
                                              ("/models/notazip.mar", 400)])
def test_failed_download_leaves_nothing_in_the_store(opted_in: ServerProcess,
                                                      files: FileServer, store: Path,
                                                      path: str, status: int):
    r = register(opted_in, f"{files.base}{path}")
    assert r.status_code == status, r.text
    message = r.json()["message"]
    if status == 413:
        assert f"max_model_download_size={LIMIT}" in message
    elif status == 504:
        assert f"model_download_timeout={TIMEOUT} s" in message
    elif path == "/models/missing.mar":
        assert "the server answered 404" in message
    else:  # downloaded, then refused by the archive checks
        assert r.json()["type"] == "InvalidModelArchiveException"
    name = path.rsplit("/", 1)[-1]
    assert not (store / name).exists() and leftovers(store) == []
    # The server is still whole: a good download works right after.
    ok = register(opted_in, f"{files.base}/models/again.mar", model_name="again")
    assert ok.status_code == 200, ok.text
    assert opted_in.management.delete("/models/again").status_code == 200


@pytest.mark.parametrize(("url", "expected"), [
    ("file:///etc/passwd.mar", "only http:// and https://"),
    ("{base}/models/fn.exe", "must be an archive file name"),
    ("{base}/models/", "must be an archive file name"),
    ("{base}/models/..%2Ffn.mar", "must be an archive file name"),
    ("http://user:pw@{host}/models/fn.mar", "credentials"),
    ("{base}/models/fn.mar\\@evil.mar", "backslashes"),
])
def test_malformed_urls_are_refused(opted_in: ServerProcess, files: FileServer, url: str,
                                    expected: str):
    before = len(files.requests)
    r = register(opted_in, url.format(base=files.base, host=files.base.split("//")[1]))
    assert r.status_code == 400 and expected in r.json()["message"], r.text
    assert len(files.requests) == before


def test_loopback_is_refused_by_default(files: FileServer, store: Path,
                                        tmp_path_factory: pytest.TempPathFactory):
    before = len(files.requests)
    with ServerProcess(tmp_path_factory.mktemp("logs") / "log", model_store=store) as srv:
        srv.wait_ready()
        r = register(srv, f"{files.base}/models/fn.mar")
        assert r.status_code == 400
        assert r.json()["type"] == "InvalidArchiveURLException"
        assert "127.0.0.1 is a loopback address" in r.json()["message"]
        assert "allowed_url_networks" in r.json()["message"]
        # A file name in the store still registers as before (allowed_urls does not apply).
        build_mar(store, "local", "fn_handler.py")
        assert register(srv, "local.mar").status_code == 200
    assert len(files.requests) == before
    assert not (store / "fn.mar").exists()


def test_load_models_at_start_by_url_and_file_kept_at_shutdown(
        files: FileServer, mar_bytes: bytes, store: Path,
        tmp_path_factory: pytest.TempPathFactory):
    files.routes["/models/at-start.mar"] = Route(mar_bytes)
    cfg = tmp_path_factory.mktemp("cfg") / "config.properties"
    cfg.write_text("allowed_url_networks=127.0.0.1/32\n"
                   f"load_models=started={files.base}/models/at-start.mar\n")
    with ServerProcess(tmp_path_factory.mktemp("logs") / "log", model_store=store,
                       ts_config=cfg) as srv:
        srv.wait_ready(models=("started",))
        r = srv.inference.post("/predictions/started", content=b"x")
        assert r.status_code == 200 and r.json()["model"] == "started"
    # TorchServe deletes a downloaded archive on unregister, not when it shuts down.
    assert (store / "at-start.mar").read_bytes() == mar_bytes
    (store / "at-start.mar").unlink()

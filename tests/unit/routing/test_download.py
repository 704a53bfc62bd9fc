"""The download step of remote registration, against a real HTTP(S) server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.errors import ConfigError, Conflict, ServingError
from serving.routing.download import (
    MAX_REDIRECTS,
    DownloadFailed,
    UrlNotAllowed,
    archive_name,
    check_url,
    download,
    resolve,
)
from serving.settings import DEFAULT_ALLOWED_URLS, Settings, build_settings
from tests.support.fileserver import FileServer, Route

BODY = b"PK\x03\x04 pretend archive bytes" * 100


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as fs:
        yield fs


def settings_for(store: Path, **values: object) -> Settings:
    base: dict[str, object] = {"model_store": store,
                               "allowed_url_networks": "127.0.0.0/8, ::1/128"}
    return Settings(**{**base, **values})


def fetch(url: str, settings: Settings) -> Path:
    return asyncio.run(download(url, settings))


def test_defaults_are_torchserves_allowed_urls_and_no_internal_networks() -> None:
    s = Settings()
    assert s.allowed_urls == DEFAULT_ALLOWED_URLS == ("file://.*|http(s)?://.*",)
    assert s.allowed_url_networks == ()
    assert s.max_model_download_size == 10 * 1024**3
    assert (s.model_download_timeout, s.model_download_connect_timeout) == (900.0, 10.0)


def test_bad_network_or_pattern_stops_the_start(tmp_path: Path) -> None:
    cfg = tmp_path / "config.properties"
    cfg.write_text("allowed_url_networks=10.0.0.1/8\n")
    with pytest.raises(ConfigError,
                       match=re.escape("allowed_url_networks: '10.0.0.1/8' is not a network")):
        build_settings(cfg, {})
    cfg.write_text("allowed_urls=http://(\n")
    with pytest.raises(ConfigError, match="allowed_urls: 'http://\\(' is not a regular"):
        build_settings(cfg, {})


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/m.mar", "only http:// and https://"),
    ("s3://bucket/m.mar", "only http:// and https://"),
    ("http://example.com/a b.mar", "whitespace"),
    ("http://example.com\\@evil.com/m.mar", "backslashes"),
    ("http://u:p@example.com/m.mar", "credentials"),
    ("http:///m.mar", "names no host"),
])
def test_check_url_refuses_malformed_urls(url: str, message: str) -> None:
    with pytest.raises(UrlNotAllowed, match=message):
        check_url(url, Settings())


def test_allowed_urls_are_full_case_insensitive_matches() -> None:
    s = Settings(allowed_urls="https://models[.]example[.]com/.*")
    assert check_url("HTTPS://models.example.com/m.mar", s).host == "models.example.com"
    for url in ("https://models.example.com.evil.io/m.mar", "http://models.example.com/m.mar",
                "https://evil.io/?https://models.example.com/m.mar"):
        with pytest.raises(UrlNotAllowed, match="does not match any allowed URL"):
            check_url(url, s)


@pytest.mark.parametrize(("url", "name"), [
    ("http://h/a/resnet-18.mar", "resnet-18.mar"), ("http://h/m.tar.gz?sig=1", "m.tar.gz"),
    ("http://h/v1.0+cpu.zip#frag", "v1.0+cpu.zip"), ("http://h/m.tgz", "m.tgz")])
def test_archive_name_is_the_last_path_segment(url: str, name: str) -> None:
    assert archive_name(check_url(url, Settings())) == name


@pytest.mark.parametrize("url", ["http://h/", "http://h/m.exe", "http://h/.hidden.mar",
                                 "http://h/a/..%2Fm.mar", "http://h/%2e%2e.mar",
                                 "http://h/m%00.mar"])
def test_archive_name_refuses_other_names(url: str) -> None:
    with pytest.raises(UrlNotAllowed, match="must be an archive file name"):
        archive_name(check_url(url, Settings()))


def test_host_name_is_resolved_checked_and_sent_as_host_header(files: FileServer,
                                                               tmp_path: Path) -> None:
    files.routes["/m/by-name.mar"] = Route(BODY)
    saved = fetch(f"http://localhost:{files.port}/m/by-name.mar", settings_for(tmp_path))
    assert saved == tmp_path / "by-name.mar" and saved.read_bytes() == BODY
    # Connected to the checked address, while the server saw the URL's own host name.
    assert files.requests == [("/m/by-name.mar", f"localhost:{files.port}")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-name.mar"]


def test_existing_name_is_a_conflict_and_is_left_alone(files: FileServer,
                                                       tmp_path: Path) -> None:
    files.routes["/m/taken.mar"] = Route(BODY)
    (tmp_path / "taken.mar").write_bytes(b"mine")
    with pytest.raises(Conflict, match=re.escape("Model file already exists taken.mar")):
        fetch(f"{files.base}/m/taken.mar", settings_for(tmp_path))
    assert (tmp_path / "taken.mar").read_bytes() == b"mine" and files.requests == []


def test_redirect_loop_stops(files: FileServer, tmp_path: Path) -> None:
    files.routes["/m/loop.mar"] = Route(status=307, headers={"Location": "/m/loop.mar"})
    with pytest.raises(DownloadFailed, match=f"more than {MAX_REDIRECTS} redirects"):
        fetch(f"{files.base}/m/loop.mar", settings_for(tmp_path))
    assert len(files.requests) == MAX_REDIRECTS + 1
    assert list(tmp_path.iterdir()) == []


def test_redirect_outside_allowed_urls_is_refused(files: FileServer, tmp_path: Path) -> None:
    files.routes["/m/out.mar"] = Route(status=301, headers={"Location": "/private/x.mar"})
    settings = settings_for(tmp_path, allowed_urls=f"http://127[.]0[.]0[.]1:{files.port}/m/.*")
    with pytest.raises(UrlNotAllowed,
                       match=re.escape("/private/x.mar does not match any allowed URL")):
        fetch(f"{files.base}/m/out.mar", settings)
    assert [path for path, _ in files.requests] == ["/m/out.mar"]


def test_redirect_to_ipv4_mapped_metadata_address_is_refused(files: FileServer,
                                                             tmp_path: Path) -> None:
    files.routes["/m/v6.mar"] = Route(status=302, headers={
        "Location": "http://[::ffff:169.254.169.254]/latest/m.mar"})
    with pytest.raises(UrlNotAllowed,
                       match=re.escape("169.254.169.254 is a cloud metadata address")):
        fetch(f"{files.base}/m/v6.mar", settings_for(tmp_path))


def test_connection_refused_is_a_download_error(tmp_path: Path) -> None:
    with FileServer() as closed:
        port = closed.port
    with pytest.raises(DownloadFailed, match="Failed to download archive from") as e:
        fetch(f"http://127.0.0.1:{port}/m/x.mar", settings_for(tmp_path))
    assert e.value.code == 400 and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_certificates_are_verified(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    store = tmp_path / "store"
    store.mkdir()
    fs = FileServer()
    fs.routes["/m/tls.mar"] = Route(BODY)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    fs.httpd.socket = context.wrap_socket(fs.httpd.socket, server_side=True)
    with fs, pytest.raises(ServingError, match="CERTIFICATE_VERIFY_FAILED") as e:
        fetch(f"https://localhost:{fs.port}/m/tls.mar", settings_for(store))
    assert e.value.code == 400 and list(store.iterdir()) == []


@pytest.mark.parametrize("url", ["http://2130706433/m.mar", "http://0x7f.1/m.mar",
                                 "http://127.1/m.mar", "http://[::ffff:7f00:1]/m.mar",
                                 "http://localhost/m.mar"])
def test_other_spellings_of_loopback_are_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowed, match="is a loopback address"):
        asyncio.run(resolve(check_url(url, Settings()), ()))

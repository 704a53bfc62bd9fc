"""Settings: config.properties parsing, validation and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ConfigError
from serving.properties import read_properties
from serving.settings import Settings, build_settings


def test_properties_syntax():
    text = ("# comment\n! also a comment\n"
            "inference_address=http://0.0.0.0:9000\n"
            "management_address : http://127.0.0.1:9001\n"
            "job_queue_size 50\n"
            "models={\\\n  \"noop\": {\"1.0\": {\"batchSize\": 4}}\\\n}\n"
            "path=C\\:\\\\models\n")
    props = read_properties(text)
    assert props["inference_address"] == "http://0.0.0.0:9000"
    assert props["management_address"] == "http://127.0.0.1:9001"
    assert props["job_queue_size"] == "50"
    assert props["models"] == '{"noop": {"1.0": {"batchSize": 4}}}'
    assert props["path"] == "C:\\models"
    with pytest.raises(ValueError, match="set twice"):
        read_properties("a=1\na=2\n")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.properties"
    path.write_text(text)
    return path


def test_torchserve_config_is_accepted(tmp_path: Path):
    store = tmp_path / "models"
    store.mkdir()
    cfg = write(tmp_path, "inference_address=http://0.0.0.0:9000\n"
                          f"model_store={store}\nload_models=all\njob_queue_size=50\n"
                          "number_of_netty_threads=4\nvmargs=-Xmx4g\n"
                          "grpc_inference_port=7070\nunregister_model_timeout=60\n"
                          "limit_max_image_pixels=false\n"
                          "models={\"noop\": {\"1.0\": {\"marName\": \"noop.mar\"}}}\n"
                          "enable_model_api=true\ndisable_token_authorization=true\n")
    s = build_settings(cfg, {"job_queue_size": 7})
    assert (s.inference_address.host, s.inference_address.port) == ("0.0.0.0", 9000)
    assert s.model_store == store and s.load_models == ["all"]
    assert s.limit_max_image_pixels is False
    assert s.job_queue_size == 7  # the command line wins over the file
    assert s.models["noop"]["1.0"]["marName"] == "noop.mar"
    assert s.enable_model_api is True


@pytest.mark.parametrize(("text", "needle"), [
    ("job_queue_size=lots\n", "job_queue_size"),
    ("job_queue_size=0\n", "job_queue_size"),
    ("inference_address=https://127.0.0.1:8443\n", "only http://"),
    ("inference_address=localhost\n", "http://host:port"),
    ("models={not json\n", "models: Value error, not valid JSON"),
    ("keystore=ks.p12\n", "TLS"),
    ("token_expiration_min=0\n", "token_expiration_min"),
    ("token_expiration_min=soon\n", "token_expiration_min"),
    ("log_level=LOUD\n", "unknown log level"),
    ("model_store=/no/such/store\n", "model_store: no folder '/no/such/store'"),
    ("service_envelope=kservev2\n", "envelopes"),
])
def test_bad_settings_are_clear_errors(tmp_path: Path, text: str, needle: str):
    with pytest.raises(ConfigError) as info:
        build_settings(write(tmp_path, text), {})
    assert needle.replace("Value error, ", "") in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_unknown_keys_are_one_warning_each_never_fatal(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture):
    cfg = write(tmp_path, "no_such_key=1\njob_queue_size=5\npython=/usr/bin/python3\n"
                          "debug=true\ngrpc_keepalive_time_ms=1\n")
    with caplog.at_level("INFO", logger="serving.settings"):
        s = build_settings(cfg, {})
    assert s.job_queue_size == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert f"{cfg}: unknown key 'no_such_key' is ignored" in warnings[0]
    assert "unknown key 'grpc_keepalive_time_ms'" in warnings[1]
    infos = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert any("python is a TorchServe setting with no effect" in m for m in infos)
    assert any("debug is a TorchServe setting with no effect" in m for m in infos)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        build_settings(tmp_path / "absent.properties", {})


def test_token_authorization_is_on_by_default_as_in_torchserve(tmp_path: Path):
    s = build_settings(None, {})
    assert (s.disable_token_authorization, s.token_expiration_min) == (False, 60.0)
    s = build_settings(write(tmp_path, "disable_token_authorization=false\n"
                                       "token_expiration_min=0.5\n"), {})
    assert (s.disable_token_authorization, s.token_expiration_min) == (False, 0.5)
    # The command line can only turn it off, as TorchServe's --disable-token-auth.
    s = build_settings(write(tmp_path, "disable_token_authorization=false\n"),
                       {"disable_token_authorization": True})
    assert s.disable_token_authorization is True


def test_archive_limits(tmp_path: Path):
    defaults = build_settings(None, {})
    assert (defaults.max_archive_size, defaults.max_archive_entries,
            defaults.max_archive_compression_ratio) == (20 * 1024**3, 10_000, 200.0)
    cfg = write(tmp_path, "max_archive_size=1048576\nmax_archive_entries=50\n"
                          "max_archive_compression_ratio=1000\n")
    s = build_settings(cfg, {})
    assert (s.max_archive_size, s.max_archive_entries, s.max_archive_compression_ratio) == (
        1048576, 50, 1000.0)
    with pytest.raises(ConfigError, match="max_archive_entries"):
        build_settings(write(tmp_path, "max_archive_entries=0\n"), {})


def test_torchserve_grpc_keys(tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("pem")
    key.write_text("pem")
    cfg = write(tmp_path, "grpc_inference_address=0.0.0.0\ngrpc_management_address=[::1]\n"
                          "grpc_inference_port=9090\ngrpc_management_port=9091\n"
                          "grpc_inference_max_connection_age_ms=60000\n"
                          "grpc_inference_max_connection_age_grace_ms=5000\n"
                          f"enable_grpc_ssl=true\ncertificate_file={cert}\n"
                          f"private_key_file={key}\n")
    s = build_settings(cfg, {"grpc_management_port": 9999})
    assert (s.grpc_inference_address, s.grpc_inference_port) == ("0.0.0.0", 9090)
    assert (s.grpc_management_address, s.grpc_management_port) == ("::1", 9999)
    assert s.grpc_inference_max_connection_age_ms == 60000
    assert s.grpc_inference_max_connection_age_grace_ms == 5000
    assert s.grpc_management_max_connection_age_ms is None
    assert s.enable_grpc_ssl and (s.certificate_file, s.private_key_file) == (cert, key)
    defaults = Settings()
    assert (defaults.grpc_inference_address, defaults.grpc_inference_port,
            defaults.grpc_management_port, defaults.enable_grpc_ssl) == (
        "127.0.0.1", 7070, 7071, False)


@pytest.mark.parametrize("value", ["http://127.0.0.1", "127.0.0.1:7070", "", "a b", "1:2:x"])
def test_grpc_address_is_a_host(tmp_path: Path, value: str):
    with pytest.raises(ConfigError, match="grpc_inference_address"):
        build_settings(write(tmp_path, f"grpc_inference_address={value}\n"), {})

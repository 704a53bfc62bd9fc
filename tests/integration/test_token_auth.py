"""Token authorization and model-API control as TorchServe 0.12, against a real server."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.support.archives import build_mar
from tests.support.scrape import scrape
from tests.support.server import ServerProcess

REFUSED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"


@pytest.fixture(scope="module")
def echo_store(store: Path) -> Path:
    build_mar(store, "echo", "echo_handler.py")
    return store


@pytest.fixture(scope="module")
def secured(echo_store: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ServerProcess]:
    """Token authorization on (the default), model API off (the default)."""
    log = tmp_path_factory.mktemp("auth") / "server.log"
    with ServerProcess(log, "--models", "echo.mar", model_store=echo_store,
                       enable_model_api=False, token_auth=True) as srv:
        srv.wait_ready(models=("echo",))
        yield srv


def assert_refused(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json() == {"code": 401, "type": "InvalidKeyException", "message": REFUSED}
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["x-request-id"]


def predict(srv: ServerProcess, headers: dict[str, str]) -> httpx.Response:
    return srv.inference.post("/predictions/echo", json={"a": 1}, headers=headers)


def test_refusals_count_as_4xx_on_the_prediction_routes_too(secured: ServerProcess):
    """The guard answers before the inference app, which counts its own routes' answers."""
    def refused() -> float:
        return scrape(secured).value("Requests4XX_total", Level="Host")

    before = refused()
    assert_refused(predict(secured, {}))
    assert_refused(secured.management.get("/models"))
    assert refused() - before == 2


def test_key_file_is_torchserves_and_private(secured: ServerProcess):
    assert stat.S_IMODE(os.stat(secured.key_file).st_mode) == 0o600
    keys = secured.keys()
    assert set(keys) == {"management", "inference", "API"}
    assert "expiration time" in keys["management"] and "expiration time" in keys["inference"]
    assert len({k["key"] for k in keys.values()}) == 3


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer not-the-key"}, {"Authorization": "Basic dXNlcjpwdw=="},
    {"Authorization": "Bearer"}, {"Authorization": ""},
])
def test_missing_or_wrong_key_is_401_everywhere(secured: ServerProcess,
                                                headers: dict[str, str]):
    assert_refused(predict(secured, headers))
    assert_refused(secured.inference.get("/ping", headers=headers))
    assert_refused(secured.inference.post("/v1/models/echo:predict",
                                          json={"instances": [1]}, headers=headers))
    assert_refused(secured.inference.get("/no/such/route", headers=headers))
    assert_refused(secured.management.get("/models", headers=headers))
    assert_refused(secured.management.get("/models/echo", headers=headers))
    assert_refused(secured.management.put("/models/echo", params={"min_worker": 1},
                                          headers=headers))


def test_each_api_takes_only_its_own_key(secured: ServerProcess):
    assert_refused(secured.management.get("/models", headers=secured.bearer("inference")))
    assert_refused(secured.management.get("/models", headers=secured.bearer("API")))
    assert_refused(predict(secured, secured.bearer("management")))
    assert_refused(predict(secured, secured.bearer("API")))


def test_the_right_keys_are_served(secured: ServerProcess):
    r = predict(secured, {**secured.bearer("inference"), "x-request-id": "mine"})
    assert r.status_code == 200 and r.json()["inputs"]["body"]["value"] == {"a": 1}
    assert r.headers["x-request-id"] == "mine"
    ping = secured.inference.get("/ping", headers=secured.bearer("inference"))
    assert ping.json() == {"status": "Healthy"}
    listed = secured.management.get("/models", headers=secured.bearer("management"))
    assert listed.json() == {"models": [{"modelName": "echo", "modelUrl": "echo.mar"}]}
    # Unknown routes behind a valid key get the ordinary 404, not an auth error.
    assert secured.inference.get("/nope", headers=secured.bearer("inference")).status_code == 404


def test_api_description_needs_no_key_as_in_torchserve(secured: ServerProcess):
    assert secured.inference.get("/api-description").status_code == 200
    assert secured.management.get("/api-description").status_code == 200


def test_model_api_off_is_405_as_torchserve_once_the_key_passes(secured: ServerProcess):
    assert_refused(secured.management.post("/models", params={"url": "echo.mar"}))
    key = secured.bearer("management")
    for r in (secured.management.post("/models", params={"url": "echo.mar"}, headers=key),
              secured.management.delete("/models/echo", headers=key),
              secured.management.delete("/models/echo/1.0", headers=key)):
        assert r.status_code == 405, r.text
        assert r.json() == {"code": 405, "type": "MethodNotAllowedException",
                            "message": "Requested method is not allowed, please refer to "
                                       "API document."}
    assert predict(secured, secured.bearer("inference")).status_code == 200  # still there


@pytest.mark.parametrize(("kind", "use"), [("management", "/models"), ("inference", "/ping")])
def test_token_api_regenerates_one_key(secured: ServerProcess, kind: str, use: str):
    client = secured.management if kind == "management" else secured.inference
    before = secured.keys()
    old = secured.bearer(kind)
    assert client.get(use, headers=old).status_code == 200

    assert_refused(secured.management.get("/token", params={"type": kind}))
    assert_refused(secured.management.get("/token", params={"type": kind}, headers=old))
    assert secured.keys() == before  # refused calls changed nothing

    r = secured.management.get("/token", params={"type": kind}, headers=secured.bearer("API"))
    assert r.status_code == 200, r.text
    assert before[kind]["key"] not in r.text  # the answer never carries a key
    after = secured.keys()
    assert after[kind]["key"] != before[kind]["key"]
    other = "inference" if kind == "management" else "management"
    assert (after[other], after["API"]) == (before[other], before["API"])
    assert_refused(client.get(use, headers=old))
    assert client.get(use, headers=secured.bearer(kind)).status_code == 200


@pytest.mark.parametrize("params", [{}, {"type": "API"}, {"type": "everything"}])
def test_token_api_names_a_bad_type(secured: ServerProcess, params: dict[str, str]):
    before = secured.keys()
    r = secured.management.get("/token", params=params, headers=secured.bearer("API"))
    assert r.status_code == 400 and "type" in r.json()["message"], r.text
    assert secured.keys() == before


def test_expired_keys_are_refused_and_a_new_one_can_be_made(echo_store: Path, tmp_path: Path):
    cfg = tmp_path / "config.properties"
    cfg.write_text("token_expiration_min=0.01\n")  # 0.6 s; TorchServe takes a fraction too
    with ServerProcess(tmp_path / "log", ts_config=cfg, model_store=echo_store,
                       token_auth=True) as srv:
        deadline = time.monotonic() + 60
        while not srv.key_file.exists():  # the key file is written once the server started
            srv.check_alive()
            assert time.monotonic() < deadline, srv.log()[-4000:]
            time.sleep(0.05)
        keys = srv.keys()
        expires = datetime.fromisoformat(keys["inference"]["expiration time"])
        assert (expires - datetime.now(UTC)).total_seconds() <= 0.6
        while True:  # poll until the server stops taking the key, which it must
            try:
                r = srv.inference.get("/ping", headers=srv.bearer("inference"))
                if r.status_code == 401:
                    break
            except httpx.TransportError:
                srv.check_alive()
            assert time.monotonic() < deadline, "the inference key never expired"
            time.sleep(0.05)
        assert_refused(r)
        assert_refused(srv.management.get("/models", headers=srv.bearer("management")))
        # The API key does not expire: it still makes a new management key.
        regen = srv.management.get("/token", params={"type": "management"},
                                   headers=srv.bearer("API"))
        assert regen.status_code == 200, regen.text
        renewed = srv.keys()["management"]
        assert renewed["key"] != keys["management"]["key"]
        assert (datetime.fromisoformat(renewed["expiration time"])
                > datetime.fromisoformat(keys["management"]["expiration time"]))
        key_file = srv.key_file
        assert srv.stop() == 0
    assert not key_file.exists()  # removed at shutdown, as `torchserve --stop` does


def test_disabled_needs_no_key_and_writes_no_file(echo_store: Path, tmp_path: Path):
    cwd = tmp_path / "cwd"
    with ServerProcess(tmp_path / "log", "--models", "echo.mar", model_store=echo_store,
                       cwd=cwd) as srv:  # token_auth=False: --disable-token-auth
        srv.wait_ready(models=("echo",))
        assert srv.inference.get("/ping").status_code == 200
        assert predict(srv, {}).status_code == 200
        assert srv.management.get("/models").status_code == 200
        assert srv.management.get("/token", params={"type": "inference"}).status_code == 404
        assert not (cwd / "key_file.json").exists()
        assert "Token authorization is disabled" in srv.log()

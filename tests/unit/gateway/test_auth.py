"""Token authorization: keys, expiry on an injected clock, regeneration and the key file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from serving.errors import ConfigError, InternalError, Unauthorized
from serving.gateway.auth import REFUSED, TokenAuthorization, TokenKind


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(tmp_path: Path, clock: Clock) -> TokenAuthorization:
    tokens = TokenAuthorization(tmp_path / "key_file.json", expiration_min=2, clock=clock)
    tokens.start()
    return tokens


def keys(auth: TokenAuthorization) -> dict[str, dict[str, str]]:
    return dict(json.loads(auth.key_file.read_text()))


def bearer(auth: TokenAuthorization, section: str) -> str:
    return f"Bearer {keys(auth)[section]['key']}"


def refused(auth: TokenAuthorization, kind: TokenKind, header: str | bytes | None) -> bool:
    try:
        auth.check(kind, header)
    except Unauthorized as e:
        assert (e.code, e.type_name, e.message) == (401, "InvalidKeyException", REFUSED)
        return True
    return False


def test_key_file_has_torchserves_layout_and_is_private(auth: TokenAuthorization):
    written = keys(auth)
    assert set(written) == {"management", "inference", "API"}
    assert set(written["management"]) == {"key", "expiration time"}
    assert set(written["inference"]) == {"key", "expiration time"}
    assert set(written["API"]) == {"key"}
    assert written["inference"]["expiration time"].endswith("Z")
    assert len({written[s]["key"] for s in written}) == 3
    assert stat.S_IMODE(os.stat(auth.key_file).st_mode) == 0o600
    assert [p.name for p in auth.key_file.parent.iterdir()] == ["key_file.json"]  # no temp left


def test_each_kind_takes_only_its_own_key(auth: TokenAuthorization):
    sections = {TokenKind.MANAGEMENT: "management", TokenKind.INFERENCE: "inference",
                TokenKind.API: "API"}
    for kind, own in sections.items():
        assert not refused(auth, kind, bearer(auth, own))
        assert not refused(auth, kind, bearer(auth, own).encode())
        for other in set(sections.values()) - {own}:
            assert refused(auth, kind, bearer(auth, other))


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Basic {key}", "{key}", "Bearer {key}x", "Bearer x{key}",
    "Bearer {key} extra", "Token {key}", "Bearer\u00e9 {key}", b"Bearer \xff\xfe",
])
def test_malformed_or_wrong_headers_are_refused(auth: TokenAuthorization,
                                                header: str | bytes | None):
    key = keys(auth)["inference"]["key"]
    value = header.replace("{key}", key) if isinstance(header, str) else header
    assert refused(auth, TokenKind.INFERENCE, value)


def test_scheme_is_case_insensitive_and_spaces_are_tolerated(auth: TokenAuthorization):
    key = keys(auth)["inference"]["key"]
    for header in (f"bearer {key}", f"Bearer   {key}", f"Bearer\t{key} "):
        assert not refused(auth, TokenKind.INFERENCE, header)


def test_management_and_inference_keys_expire_the_api_key_does_not(auth: TokenAuthorization,
                                                                   clock: Clock):
    clock.now += 2 * 60 - 0.001
    assert not refused(auth, TokenKind.INFERENCE, bearer(auth, "inference"))
    clock.now += 0.001
    assert refused(auth, TokenKind.INFERENCE, bearer(auth, "inference"))
    assert refused(auth, TokenKind.MANAGEMENT, bearer(auth, "management"))
    clock.now += 10**6
    assert not refused(auth, TokenKind.API, bearer(auth, "API"))


def test_regenerating_replaces_one_key_and_restarts_its_expiry(auth: TokenAuthorization,
                                                               clock: Clock):
    before = keys(auth)
    clock.now += 100
    auth.regenerate(TokenKind.MANAGEMENT)
    after = keys(auth)
    assert after["management"]["key"] != before["management"]["key"]
    assert after["management"]["expiration time"] > before["management"]["expiration time"]
    assert (after["inference"], after["API"]) == (before["inference"], before["API"])
    assert refused(auth, TokenKind.MANAGEMENT, f"Bearer {before['management']['key']}")
    clock.now += 60  # 160 s after start: the inference key is gone, the new one is not
    assert not refused(auth, TokenKind.MANAGEMENT, bearer(auth, "management"))
    assert refused(auth, TokenKind.INFERENCE, bearer(auth, "inference"))
    with pytest.raises(ValueError):
        auth.regenerate(TokenKind.API)


def test_a_key_file_that_cannot_be_written(tmp_path: Path, clock: Clock):
    # A folder that is a file: unwritable even for root, who ignores permission bits.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write"):
        TokenAuthorization(blocker / "key_file.json", 60, clock=clock).start()

    folder = tmp_path / "keys"
    folder.mkdir()
    tokens = TokenAuthorization(folder / "key_file.json", 60, clock=clock)
    tokens.start()
    old = bearer(tokens, "inference")
    (folder / "key_file.json").unlink()
    folder.rmdir()
    folder.write_text("")  # the folder is gone: the new key cannot be published
    with pytest.raises(InternalError, match="was not changed"):
        tokens.regenerate(TokenKind.INFERENCE)
    assert not refused(tokens, TokenKind.INFERENCE, old)


def test_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path, clock: Clock):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "key_file.json").symlink_to(target)
    TokenAuthorization(tmp_path / "key_file.json", 60, clock=clock).start()
    assert target.read_text() == "keep"
    assert not (tmp_path / "key_file.json").is_symlink()


def test_key_file_removed_at_shutdown_unless_another_server_rewrote_it(tmp_path: Path,
                                                                      clock: Clock):
    first = TokenAuthorization(tmp_path / "key_file.json", 60, clock=clock)
    first.start()
    second = TokenAuthorization(tmp_path / "key_file.json", 60, clock=clock)
    second.start()
    first.remove_key_file()
    assert (tmp_path / "key_file.json").exists()
    second.remove_key_file()
    assert not (tmp_path / "key_file.json").exists()
    second.remove_key_file()  # already gone: nothing to do, no error

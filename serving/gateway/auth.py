"""Token authorization as TorchServe 0.12 does it: three keys in `key_file.json`, sent as
`Authorization: Bearer <key>`; protocol-neutral, so every front end calls the same `check`."""

from __future__ import annotations

import contextlib
import enum
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from serving.errors import ConfigError, InternalError, Unauthorized

log = logging.getLogger(__name__)

KEY_FILE_NAME = "key_file.json"  # TorchServe writes it into the working directory
# TorchServe's own wording, so clients that match on it keep working.
REFUSED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
_BEARER = re.compile(rb"^[Bb]earer[ \t]+(\S+)[ \t]*$")


class TokenKind(enum.Enum):
    """Which key a call needs; the value is the key's section in `key_file.json`."""

    INFERENCE = "inference"
    MANAGEMENT = "management"
    API = "API"  # the token API itself; this key never expires


@dataclass(slots=True)
class _Key:
    secret: bytes
    expires_at: float | None  # on the injected clock; None: never
    expires_wall: datetime | None  # the same moment, as written into the key file


class TokenAuthorization:
    """The three keys, their expiry and the key file that publishes them.

    `clock` is monotonic seconds (injectable for tests); it decides expiry, so a change of the
    wall clock neither extends nor cuts a key's life. Nothing here blocks beyond writing one
    small file when a key is regenerated.
    """

    def __init__(self, key_file: Path, expiration_min: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key_file = key_file
        self.lifetime_s = expiration_min * 60.0
        self._clock = clock
        self._keys = {kind: self._new_key(kind) for kind in TokenKind}

    def start(self) -> None:
        """Write the key file; a file that cannot be written stops the start (as TorchServe)."""
        try:
            self._write(self._keys)
        except OSError as e:
            raise ConfigError(f"token authorization: cannot write {self.key_file}: "
                              f"{e.strerror or e}") from None
        log.info("Token authorization is on: keys in %s (send 'Authorization: Bearer <key>'; "
                 "management and inference keys expire after %g min)", self.key_file,
                 self.lifetime_s / 60)

    def check(self, kind: TokenKind, authorization: str | bytes | None) -> None:
        """Pass, or raise `Unauthorized` (401): no header, not `Bearer <key>`, a wrong key or
        an expired one all get the same answer, so a caller learns nothing from the refusal."""
        if authorization is None:
            raise Unauthorized(REFUSED)
        raw = (authorization.encode("utf-8", "replace") if isinstance(authorization, str)
               else authorization)
        match = _BEARER.match(raw)
        key = self._keys[kind]
        # compare_digest runs even on a malformed header: the time taken says nothing either.
        given = match.group(1) if match else b""
        same = hmac.compare_digest(given, key.secret)
        if not (same and match) or (key.expires_at is not None
                                    and self._clock() >= key.expires_at):
            raise Unauthorized(REFUSED)

    def regenerate(self, kind: TokenKind) -> None:
        """A fresh management or inference key with a fresh expiry; the old one stops working.
        The file is written first: if it cannot be, the old key stays in force."""
        if kind is TokenKind.API:
            raise ValueError("the API key is not regenerated")
        keys = {**self._keys, kind: self._new_key(kind)}
        try:
            self._write(keys)
        except OSError as e:
            log.error("cannot write %s: %s", self.key_file, e)
            raise InternalError(f"could not write the key file: {e.strerror or e}; "
                                f"the {kind.value} key was not changed") from None
        self._keys = keys
        log.info("%s key regenerated; new key in %s", kind.value, self.key_file)

    def remove_key_file(self) -> None:
        """At shutdown (TorchServe deletes it on stop), unless another process replaced it."""
        with contextlib.suppress(OSError, ValueError):
            written = json.loads(self.key_file.read_text(encoding="utf-8"))
            if written.get("API", {}).get("key") == self._keys[TokenKind.API].secret.decode():
                self.key_file.unlink()

    def _new_key(self, kind: TokenKind) -> _Key:
        # 192 random bits (TorchServe uses 48); URL-safe so it fits a header unquoted.
        secret = secrets.token_urlsafe(24).encode("ascii")
        if kind is TokenKind.API:
            return _Key(secret, None, None)
        return _Key(secret, self._clock() + self.lifetime_s,
                    datetime.now(UTC) + timedelta(seconds=self.lifetime_s))

    def _write(self, keys: dict[TokenKind, _Key]) -> None:
        """TorchServe's layout, written to a 0600 temporary file and renamed over the old one,
        so a reader never sees half a file and the keys are never readable by others."""
        content: dict[str, dict[str, str]] = {}
        for kind in (TokenKind.MANAGEMENT, TokenKind.INFERENCE, TokenKind.API):
            key = keys[kind]
            entry = {"key": key.secret.decode("ascii")}
            if key.expires_wall is not None:
                entry["expiration time"] = _instant(key.expires_wall)
            content[kind.value] = entry
        folder = self.key_file.parent
        fd, tmp = tempfile.mkstemp(prefix=".key_file.", suffix=".tmp", dir=folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.key_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _instant(moment: datetime) -> str:
    """Java's `Instant.toString()`, as TorchServe writes it: `2024-02-16T21:12:24.801167Z`."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

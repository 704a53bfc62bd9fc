"""What a load run sends and for how long: the request target and the run plan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """One request to repeat; only the URL differs between this server and TorchServe."""

    base_url: str
    path: str
    body: bytes
    content_type: str = "application/octet-stream"
    method: str = "POST"
    expect: bytes | None = None  # a 2xx whose body lacks this counts as an error
    # Several bodies (e.g. sentences of varied lengths): the load cycles through them, each
    # concurrent worker from its own offset; empty: `body` every time.
    bodies: tuple[bytes, ...] = ()

    @property
    def all_bodies(self) -> tuple[bytes, ...]:
        return self.bodies or (self.body,)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.path.lstrip("/")

    @classmethod
    def from_file(
        cls, base_url: str, path: str, payload: str | Path, content_type: str,
        *, method: str = "POST", expect: str | None = None,
    ) -> Target:
        return cls(base_url, path, Path(payload).read_bytes(), content_type, method,
                   expect.encode() if expect else None)


@dataclass(frozen=True)
class Plan:
    """Warm-up, then a measured window of `duration_s`, or up to `requests` completions.

    With `requests` set, the window ends at the N-th completion and `duration_s` is a cap.
    """

    warmup_s: float = 2.0
    duration_s: float = 10.0
    requests: int | None = None
    timeout_s: float = 60.0

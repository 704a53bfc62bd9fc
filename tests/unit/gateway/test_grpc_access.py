"""The gRPC access log's peer address: grpc's peer strings written as the HTTP log writes a
client."""

from __future__ import annotations

import pytest

from serving.gateway.grpc.access import peer_address


@pytest.mark.parametrize(("peer", "written"), [
    ("ipv4:127.0.0.1:53516", "127.0.0.1:53516"),
    ("ipv6:[::1]:53516", "::1:53516"),
    ("unix:/tmp/s.sock", "/tmp/s.sock"),
    ("", "-"),
    (None, "-"),
])
def test_peer_address(peer: str | None, written: str) -> None:
    assert peer_address(peer) == written

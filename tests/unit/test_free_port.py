"""The test servers' ports: outside the range the kernel gives to outgoing connections."""

from __future__ import annotations

import socket

from tests.support.server import ephemeral_low, free_port


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < ephemeral_low() for port in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


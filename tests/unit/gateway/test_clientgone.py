"""ClientGone calls its listener exactly once, also when the client left before anyone
listened; a listener removed hears nothing. (The HTTP protocol firing it on a lost connection
is exercised through the real server in tests/integration/test_error_table.py.)"""

from __future__ import annotations

from serving.gateway.clientgone import EXTENSION, ClientGone, client_gone


def test_fires_once_for_a_listener_set_before() -> None:
    heard: list[str] = []
    gone = ClientGone()
    gone.on_fire(lambda: heard.append("gone"))
    gone.fire()
    gone.fire()
    assert heard == ["gone"]


def test_a_listener_set_after_the_client_left_hears_it_at_once() -> None:
    heard: list[str] = []
    gone = ClientGone()
    gone.fire()
    gone.on_fire(lambda: heard.append("late"))
    assert heard == ["late"]


def test_a_removed_listener_hears_nothing() -> None:
    heard: list[str] = []
    gone = ClientGone()
    gone.on_fire(lambda: heard.append("x"))
    gone.on_fire(None)
    gone.fire()
    assert heard == []


def test_found_only_where_the_server_put_one() -> None:
    gone = ClientGone()
    assert client_gone({"extensions": {EXTENSION: gone}}) is gone
    assert client_gone({"extensions": {}}) is None
    assert client_gone({}) is None

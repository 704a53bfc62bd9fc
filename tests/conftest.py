"""Fixtures shared by every test: a model store folder and a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reverse-order", action="store_true", default=False,
                     help="run the collected tests last to first (modules and the tests "
                          "inside them), to show no test depends on one that ran before it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reverse-order"):
        items.reverse()  # each module's tests stay together: module fixtures still start once


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server per test module, on free ports, with the model API enabled."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, model_store=store) as srv:
        srv.wait_ready()
        yield srv

"""deploy/grafana: every PromQL query of the dashboard names metrics (and labels) that a real
server exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.archives import build_mar
from tests.support.scrape import Scrape, scrape
from tests.support.server import ROOT, ServerProcess

DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, in rows too."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or labels)."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values and strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(rf"(?<![\w$.]){IDENT}", text):
        following = text[match.end():].lstrip()
        if not following.startswith("(") and match.group() not in KEYWORDS:
            names.add(match.group())
    return names


def selector_labels(expr: str) -> list[tuple[str, str]]:
    """(metric, label) for every label a selector matches on, and every `by` label."""
    found = [(m.group(1), label) for m in re.finditer(rf"({IDENT})\{{([^}}]*)\}}", expr)
             for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2))]
    for by in re.finditer(r"\bby\s*\(([^)]*)\)\s*\((.*)", expr):
        labels = [x.strip() for x in by.group(1).split(",") if x.strip() and x.strip() != "le"]
        found += [(name, label) for name in metric_names(by.group(2)) for label in labels]
    return found


def test_the_dashboards_are_grafana_json() -> None:
    assert DASHBOARDS, "no dashboard under deploy/grafana"
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["title"] and board["uid"] and board["schemaVersion"] >= 36
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
            if panel["type"] != "row":
                assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource", "model"} <= variables


def test_the_metric_name_parser_finds_names_not_functions() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, model) (rate(serving_x_bucket{model=~"$m"}'
            '[$__rate_interval]))) / on (model) group_left Requests2XX offset 5m')
    assert metric_names(expr) == {"serving_x_bucket", "Requests2XX"}
    assert ("serving_x_bucket", "model") in selector_labels(expr)


@pytest.fixture(scope="module")
def exported(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    """What a real server exports once it has answered requests, good and bad."""
    build_mar(store, "dash", "metrics_handler.py")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, "--models", "dash.mar", model_store=store) as server:
        server.wait_ready(("dash",))
        for order in ({}, {"status": 404}, {"raise": 500}):
            server.inference.post("/predictions/dash", json=order)
        return scrape(server)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_names_exported_metrics_and_labels(path: Path, exported: Scrape) -> None:
    board = json.loads(path.read_text())
    names = exported.exposed_names()
    found = list(queries(board))
    # An empty list would make every check below pass: the parsing must have found something.
    assert found and all(metric_names(expr) for _, expr in found), found
    assert any(selector_labels(expr) for _, expr in found)
    missing = [(where, name) for where, expr in found
               for name in metric_names(expr) if name not in names]
    assert not missing, f"queries name metrics the server does not export: {missing}"
    for variable in board["templating"]["list"]:
        query = variable.get("definition", "")
        for name in re.findall(rf"label_values\(({IDENT})", query):
            assert name in names, f"variable {variable['name']}: {name} is not exported"
    for where, expr in found:
        for name, label in selector_labels(expr):
            samples = [s for s in exported.samples if s.name in (name, f"{name}_total")]
            assert any(label in s.labels for s in samples), \
                f"{where}: {name} has no label {label!r}"

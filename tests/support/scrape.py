"""Scraping a real server's /metrics with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ServerProcess


class Scrape:
    """One scrape: every sample by its name, with labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
        return sum(s.value for s in self.samples if s.name == name
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    def has(self, name: str, **labels: str) -> bool:
        return any(s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
                   for s in self.samples)

    def exposed_names(self) -> set[str]:
        """The sample names as written on the wire, which is what Prometheus stores and PromQL
        queries (the parser adds `_total` to counters that TorchServe writes without it)."""
        return {line.split("{", 1)[0].split(" ", 1)[0] for line in self.text.splitlines()
                if line and not line.startswith("#")}


def scrape(server: ServerProcess, **params: object) -> Scrape:
    r = server.metrics.get("/metrics", params=params)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(r.text)

"""metrics_config: TorchServe's metrics.yaml, and clear errors for a bad one."""

from __future__ import annotations

from pathlib import Path

import pytest
import ts

from serving.errors import ConfigError
from serving.metrics.catalog import TS_FRONTEND_METRICS
from serving.metrics.config import load_metrics_config


def test_torchserve_default_metrics_yaml_enables_every_frontend_metric() -> None:
    config = load_metrics_config(Path(ts.__file__).parent / "configs" / "metrics.yaml")
    assert config.frontend == TS_FRONTEND_METRICS
    assert config.model == {"HandlerTime": "GAUGE", "PredictionTime": "GAUGE"}


def test_no_file_means_torchserve_defaults() -> None:
    assert load_metrics_config(None).frontend == TS_FRONTEND_METRICS


@pytest.mark.parametrize(("text", "message"), [
    ("- a list", "expected a mapping"),
    ("extra: 1", "unknown section"),
    ("ts_metrics:\n  counter:\n    - name: Bogus\n", "Bogus is not a TorchServe frontend"),
    ("model_metrics:\n  summary:\n    - name: X\n", "unknown type 'summary'"),
    ("model_metrics:\n  gauge:\n    - unit: ms\n", "every entry needs a name"),
    ("model_metrics: [1, 2]\n", "expected counter/gauge/histogram"),
    ("ts_metrics: {counter: [", "is not YAML"),
])
def test_a_bad_file_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_metrics_config(path)

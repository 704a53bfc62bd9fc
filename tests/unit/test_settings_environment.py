"""Settings from the environment: TorchServe's `TS_<KEY>` under enable_envvars_config, this
server's `SERVING_<KEY>` always, and the precedence over the file and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ConfigError
from serving.settings import build_settings


def props(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.properties"
    path.write_text(text)
    return path


def test_ts_variables_need_enable_envvars_config(tmp_path: Path):
    env = {"TS_JOB_QUEUE_SIZE": "7", "TS_INFERENCE_ADDRESS": "http://0.0.0.0:9080"}
    off = build_settings(props(tmp_path, "job_queue_size=50\n"), {}, env)
    assert off.job_queue_size == 50 and off.inference_address.port == 8080
    on = build_settings(props(tmp_path, "enable_envvars_config=true\njob_queue_size=50\n"),
                        {}, env)
    assert on.job_queue_size == 7 and str(on.inference_address) == "http://0.0.0.0:9080"
    # The switch can come from the environment too (a container without a config file).
    alone = build_settings(None, {}, {**env, "TS_ENABLE_ENVVARS_CONFIG": "true"})
    assert alone.job_queue_size == 7


def test_environment_wins_over_command_line_and_file(tmp_path: Path):
    env = {"SERVING_DEFAULT_WORKERS_PER_MODEL": "3", "SERVING_DRAIN_TIMEOUT": "45",
           "TS_ENABLE_ENVVARS_CONFIG": "true", "TS_DRAIN_TIMEOUT": "10"}
    s = build_settings(props(tmp_path, "default_workers_per_model=2\n"),
                       {"default_workers_per_model": 4}, env)
    assert s.default_workers_per_model == 3
    assert s.drain_timeout == 45  # SERVING_ over TS_


def test_serving_variables_need_no_switch_and_model_store_is_a_path(tmp_path: Path):
    s = build_settings(None, {}, {"SERVING_MODEL_STORE": str(tmp_path),
                                  "SERVING_DISABLE_TOKEN_AUTHORIZATION": "true"})
    assert s.model_store == tmp_path and s.disable_token_authorization


def test_unrelated_variables_with_the_prefixes_are_left_alone():
    # What Kubernetes injects for Services named `serving` and `ts`, and the worker's own.
    env = {"SERVING_PORT": "tcp://10.0.0.1:8080", "SERVING_SERVICE_HOST": "10.0.0.1",
           "TS_PORT_8080_TCP": "tcp://10.0.0.2:8080", "SERVING_PLACEMENT": "{}",
           "TS_ENABLE_ENVVARS_CONFIG": "true", "TS_CONFIG_FILE": "/nowhere"}
    assert build_settings(None, {}, env) == build_settings(None, {})


def test_a_bad_value_names_the_variable(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"SERVING_JOB_QUEUE_SIZE.*job_queue_size"):
        build_settings(None, {}, {"SERVING_JOB_QUEUE_SIZE": "many"})

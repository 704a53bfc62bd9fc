"""Schemathesis against the OpenAPI documents both APIs serve: no 5xx, no hang, and every
answer has a documented status, content type and body."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.archives import build_mar
from tests.support.server import ServerProcess

MODEL = "fuzz"
EXAMPLES = 40        # per operation, mode and model-name choice
CALL_TIMEOUT = 15.0  # seconds; a call that takes longer is a hang


@pytest.fixture(scope="module")
def fuzz_server(store: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:
    build_mar(store, MODEL, "fuzz_handler.py")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    # The model API is on so that register/scale/unregister are fuzzed past the 405.
    with ServerProcess(log, "--models", f"{MODEL}={MODEL}.mar", model_store=store) as srv:
        srv.wait_ready(models=(MODEL,))
        yield srv


def no_server_error(ctx: Any, response: Any, case: Case) -> None:
    """Stricter than schemathesis's `not_a_server_error`: 503 and 504 too.

    They are legitimate answers to load (a full queue, a slow batch), but these calls come one
    at a time to a handler that never fails and answers at once, so here any 5xx is a bug.
    """
    if response.status_code >= 500:
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


CHECKS: list[Callable[..., Any]] = [no_server_error, status_code_conformance,
                                    content_type_conformance, response_schema_conformance]


def strict(document: dict[str, Any]) -> dict[str, Any]:
    """The served document without its `default` responses (a handler's own error codes):
    the fuzz handler chooses none, so any status not listed is a server bug."""
    doc = copy.deepcopy(document)
    for ops in doc["paths"].values():
        for op in ops.values():
            op.get("responses", {}).pop("default", None)
    return doc


def fuzz(base_url: str, document: dict[str, Any], fixed: dict[str, str]) -> tuple[int, list[str]]:
    """Run every operation positive and negative, once with free path parameters and once
    with `fixed` ones where the operation takes them; returns (calls made, failures)."""
    schema = schemathesis.openapi.from_dict(strict(document))
    calls = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        names = {p.name for p in op.path_parameters}
        choices: list[dict[str, str] | None] = [None]
        if names and names <= set(fixed):
            choices.append({n: fixed[n] for n in names})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in choices:
                strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)

                @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                          database=None, phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def run(case: Case) -> None:
                    nonlocal calls
                    calls += 1
                    response = case.call(base_url=base_url, timeout=CALL_TIMEOUT)
                    case.validate_response(response, checks=CHECKS)

                try:
                    run()
                except Unsatisfiable:
                    pass  # nothing to negate: no parameters, or only free-form strings
                except Exception as e:  # collect every operation's failure, then report all
                    failures.append(f"{op.method.upper()} {op.path} ({mode.value}, "
                                    f"{path_parameters}): {e}")
    return calls, failures


def test_both_documents_are_served_alike(fuzz_server: ServerProcess) -> None:
    for client in (fuzz_server.inference, fuzz_server.management):
        options = client.request("OPTIONS", "/")
        assert options.status_code == 200
        assert options.headers["content-type"] == "application/json"
        document = options.json()
        assert document["openapi"] == "3.0.1" and document["info"]["title"] == "TorchServe APIs"
        assert client.get("/openapi.json").json() == document
        assert client.get("/api-description").json() == document
        for path, ops in document["paths"].items():
            for method, op in ops.items():
                for status, response in op["responses"].items():
                    if status.startswith(("4", "5")) and path != "/ping":
                        schema = response["content"]["application/json"]["schema"]
                        # OIP answers errors with its own body, {"error": "..."}.
                        kind = "OipError" if path.startswith("/v2") else "Error"
                        assert schema == {"$ref": f"#/components/schemas/{kind}"}, (
                            f"{method} {path} {status}")
    inference = fuzz_server.inference.request("OPTIONS", "/").json()["paths"]
    assert {"/predictions/{model_name}", "/predictions/{model_name}/{model_version}",
            "/explanations/{model_name}", "/explanations/{model_name}/{model_version}",
            "/v1/models/{model_name}:predict", "/ping", "/v2", "/v2/health/live",
            "/v2/health/ready", "/v2/models/{model_name}/infer",
            "/v2/models/{model_name}/versions/{model_version}/infer"} <= set(inference)
    management = fuzz_server.management.request("OPTIONS", "/").json()["paths"]
    assert {"/models", "/models/{model_name}", "/models/{model_name}/{model_version}",
            "/models/{model_name}/{model_version}/set-default"} <= set(management)


@pytest.mark.parametrize("api", ["inference", "management"])
def test_fuzz_api(fuzz_server: ServerProcess, api: str) -> None:
    client: httpx.Client = getattr(fuzz_server, api)
    document = client.request("OPTIONS", "/").json()
    # Register/scale/unregister of the served model itself would only measure worker start-up;
    # its name is given to the read-only and inference operations.
    fixed = {"model_name": MODEL, "model_version": "1.0"} if api == "inference" else {}
    calls, failures = fuzz(str(client.base_url), document, fixed)
    print(f"{api}: {calls} calls, {len(failures)} failing operations")
    assert not failures, "\n\n".join(failures)
    assert calls > 100
    fuzz_server.check_alive()
    r = fuzz_server.inference.post(f"/predictions/{MODEL}", json={"a": 1})
    assert r.status_code == 200 and r.json() == {"body": "dict"}

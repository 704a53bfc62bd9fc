"""A TorchServe handler that misbehaves on request: the faults of the stress benchmark.

A request whose JSON body is `{"fault": KIND, ...}` makes its whole batch misbehave:
`raise` raises, `wrong_count` returns one answer fewer than the batch has requests, `sleep`
sleeps `seconds` (past the model's response timeout). Every other request is answered
`{"ok": true}`, like the noop handler, so normal traffic costs only the serving overhead.
"""

from __future__ import annotations

import time
from typing import Any

from ts.torch_handler.base_handler import BaseHandler


def _fault(row: Any) -> dict[str, Any]:
    body = row.get("body") if isinstance(row, dict) else None
    return body if isinstance(body, dict) and "fault" in body else {}


class FaultHandler(BaseHandler):  # type: ignore[misc]
    """Faults come from the requests, so the load client decides how often they happen."""

    def initialize(self, context: Any) -> None:
        self.context = context
        self.initialized = True

    def preprocess(self, data: list[Any]) -> list[Any]:
        return data

    def inference(self, data: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        return data

    def postprocess(self, data: list[Any]) -> list[dict[str, bool]]:
        faults = [f for f in map(_fault, data) if f]
        kinds = {f["fault"] for f in faults}
        if "sleep" in kinds:
            time.sleep(max(float(f.get("seconds", 0)) for f in faults))
        if "raise" in kinds:
            raise RuntimeError("fault injected by the stress benchmark")
        answers = [{"ok": True} for _ in data]
        return answers[:-1] if "wrong_count" in kinds else answers

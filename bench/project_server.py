"""The project's own server (`python -m serving start`) under the same launcher as TorchServe."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.server import ServerProcess
from bench.tsconfig import ModelConfig, Ports, registrations, render

REPO = Path(__file__).resolve().parents[1]


class ProjectServer(ServerProcess):
    """`with ProjectServer(store, models={...}) as s: s.base_url`, mirroring `TorchServe`.

    It is given the very config.properties TorchServe gets (ports, queue size, per-model
    workers and batching), so a comparison differs only in the server.
    """

    def __init__(self, model_store: Path, models: Mapping[str, ModelConfig], *,
                 pin_cpus: str | None = "0", ports: Ports | None = None,
                 workdir: Path | None = None, job_queue_size: int = 100,
                 extra_properties: Mapping[str, str] | None = None,
                 ready_timeout_s: float = 180.0) -> None:
        self.ports = ports or Ports.free()
        workdir = (workdir or Path(tempfile.mkdtemp(prefix="serving-bench-"))).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        store = model_store.resolve()
        self.config_path = workdir / "config.properties"
        self.config_path.write_text(render(store, models, self.ports,
                                           job_queue_size=job_queue_size,
                                           extra=extra_properties))
        command = [sys.executable, "-m", "serving", "start", "--model-store", str(store),
                   "--ts-config", str(self.config_path)]
        # The package is run from the checkout, not installed; the child's cwd is the workdir.
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = {"PYTHONPATH": path}
        if (extra_properties or {}).get("access_log") == "true":
            # The bench's request-logging "on" mode: the access log goes to a file under
            # LOG_LOCATION, as TorchServe's does, not to the console.
            env["LOG_LOCATION"] = str(workdir / "logs")
        super().__init__(command, base_url=self.ports.inference_url,
                         management_url=self.ports.management_url,
                         workers={name: m.workers for name, m in models.items()},
                         workdir=workdir, pin_cpus=pin_cpus,
                         env=env,
                         ready_timeout_s=ready_timeout_s,
                         registrations=registrations(models))

    def optimization_report(self, model: str) -> dict[str, Any]:
        """describe's optimization report of `model` (empty for a model served as loaded)."""
        with urllib.request.urlopen(f"{self.management_url}/models/{model}", timeout=30) as r:
            described = json.loads(r.read())
        return dict((described[0].get("optimization") or {}).get("report") or {})

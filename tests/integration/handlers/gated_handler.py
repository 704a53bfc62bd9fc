"""Test handler whose initialize waits for a gate file (bounded), so a test decides how long a
worker stays loading; its requests sleep on request, as slow_handler's do."""

import json
import os
import time
from pathlib import Path


class Gated:
    def initialize(self, context):
        cfg = context.model_yaml_config
        Path(cfg["started_dir"], str(os.getpid())).touch()
        gate = Path(cfg["gate"])
        deadline = time.monotonic() + 300
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.ledger = cfg.get("ledger")

    def handle(self, data, context):
        orders = []
        for row in data:
            body = row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            orders.append(body or {})
        if self.ledger:
            with open(self.ledger, "a") as f:
                for order in orders:
                    f.write(json.dumps(order) + "\n")
        time.sleep(max(float(o.get("sleep", 0)) for o in orders))
        return [{"pid": os.getpid(), "tag": o.get("tag")} for o in orders]

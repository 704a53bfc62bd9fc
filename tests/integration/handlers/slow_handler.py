"""Test handler that sleeps, dies or fails on request, and keeps a ledger of what it ran."""

import json
import os
import time


class SlowHandler:
    def initialize(self, context):
        self.ledger = context.model_yaml_config.get("ledger")

    def handle(self, data, context):
        orders = []
        for row in data:
            body = row.get("body", row.get("data"))  # a KServe v1 instance is "data"
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            orders.append(body or {})
        if self.ledger:
            with open(self.ledger, "a") as f:
                for order in orders:
                    f.write(json.dumps(order) + "\n")
        for order in orders:
            if order.get("exit"):
                os._exit(3)
            if order.get("fail"):
                raise RuntimeError("failing on request")
        time.sleep(max(float(o.get("sleep", 0)) for o in orders))
        return [{"pid": os.getpid(), "tag": o.get("tag"), "batch": len(data)} for o in orders]

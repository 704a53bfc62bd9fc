"""Test handler that sleeps, dies or fails on request, and keeps a ledger of what it ran."""

import json
import os
import time


class SlowHandler:
    def initialize(self, context):
        self.ledger = context.model_yaml_config.get("ledger")
        self.batches = 0

    def handle(self, data, context):
        orders = []
        for row in data:
            body = row.get("body", row.get("data"))  # a KServe v1 instance is "data"
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            orders.append(body or {})
        self.batches += 1
        if self.ledger:
            # One write per batch (O_APPEND): workers sharing a ledger never interleave lines
            # of one batch; "_batch" says which orders ran together, and in which process.
            batch_id = f"{os.getpid()}:{self.batches}"
            with open(self.ledger, "a") as f:
                f.write("".join(json.dumps({**order, "_batch": batch_id}) + "\n"
                                for order in orders))
        for order in orders:
            if order.get("exit"):
                os._exit(3)
            if order.get("fail"):
                raise RuntimeError("failing on request")
        time.sleep(max(float(o.get("sleep", 0)) for o in orders))
        return [{"pid": os.getpid(), "tag": o.get("tag"), "batch": len(data)} for o in orders]

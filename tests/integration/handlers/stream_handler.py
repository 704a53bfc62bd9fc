"""Test handler that streams as TorchServe handlers do: intermediate answers through
`send_intermediate_predict_response` (both of TorchServe's spellings), then the final one.

Orders (JSON body): {"tokens": n} sends n intermediate answers "t0".."t{n-1}", then returns
"end"; "wait_for": a file that must exist before the second token is sent; "sleep": seconds
between tokens; "fail_after": raise after that many tokens; "status": the final answer's
status. Each token sent is appended to the `ledger` file named in the model config.
"""

import json
import os
import time

from ts.handler_utils.utils import send_intermediate_predict_response as send_utils
from ts.protocol.otf_message_handler import send_intermediate_predict_response as send_otf


class StreamHandler:
    def initialize(self, context):
        self.ledger = context.model_yaml_config.get("ledger")

    def handle(self, data, context):
        orders = []
        for row in data:
            body = row.get("body") or row.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            orders.append(body or {})
        order = orders[0]
        for i in range(int(order.get("tokens", 0))):
            if i == 1 and order.get("wait_for"):
                deadline = time.monotonic() + 60
                while not os.path.exists(order["wait_for"]) and time.monotonic() < deadline:
                    time.sleep(0.02)
            if order.get("fail_after") is not None and i >= int(order["fail_after"]):
                raise RuntimeError("failing in the middle of a stream")
            send = send_otf if i % 2 == 0 else send_utils
            send([f"t{i}" for _ in data], context.request_ids, "Intermediate Prediction success",
                 200, context)
            if self.ledger:
                with open(self.ledger, "a") as f:
                    f.write(f"{order.get('tag')} t{i}\n")
            time.sleep(float(order.get("sleep", 0)))
        if order.get("status"):
            for i in range(len(data)):
                context.set_response_status(int(order["status"]), "", idx=i)
        return ["end" for _ in data]

"""Test handler whose behaviour each request chooses: statuses, headers, errors, bad batches."""

import json

from ts.utils.util import PredictionException


class BehaviourHandler:
    def initialize(self, context):
        self.context = context

    def handle(self, data, context):
        orders = []
        for row in data:
            body = row.get("body", row.get("data"))  # a KServe v1 instance is "data"
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            orders.append(body or {})
        for order in orders:
            if order.get("raise") == "prediction":
                raise PredictionException("custom failure from the handler", order["code"])
            if order.get("raise") == "memory":
                raise MemoryError("pretend the model ran out of memory")
            if order.get("raise") == "value":
                raise ValueError("an ordinary bug in the handler")
        if any(order.get("answers") == "one-extra" for order in orders):
            return [{"ok": True} for _ in range(len(data) + 1)]
        out = []
        for i, order in enumerate(orders):
            if "status" in order:
                context.set_response_status(order["status"], "custom phrase", idx=i)
            if "content_type" in order:
                context.set_response_content_type(i, order["content_type"])
            for key, value in order.get("headers", {}).items():
                context.set_response_header(i, key, value)
            kind = order.get("return", "json")
            if kind == "text":
                out.append(f"item {i} of {len(data)}")
            elif kind == "bytes":
                out.append(bytes([0, 1, 2, 255]))
            elif kind == "big":
                out.append(b"x" * order["size"])
            else:
                out.append({"item": i, "batch": len(data), "echo": order.get("echo")})
        return out

"""Test handler for request limits: reports each input's exact bytes, and on request exits,
recurses without end or raises KeyboardInterrupt, to show the worker survives all three."""

import os
import sys


def _shown(value):
    if isinstance(value, (bytes, bytearray)):
        return {"type": type(value).__name__, "hex": bytes(value).hex()}
    return {"type": type(value).__name__, "value": value}


def _recurse(n):
    return _recurse(n + 1) + 1


class LimitsHandler:
    def initialize(self, context):
        self.context = context

    def handle(self, data, context):
        out = []
        for i, row in enumerate(data):
            body = row.get("body")
            action = body.get("do") if isinstance(body, dict) else None
            if action == "exit":
                sys.exit(3)
            if action == "recurse":
                _recurse(0)
            if action == "interrupt":
                raise KeyboardInterrupt
            out.append({
                "pid": os.getpid(),
                "request_id": context.get_request_id(i),
                "inputs": {name: _shown(value) for name, value in row.items()},
                "types": {name: (context.get_request_header(i, name) or {}).get("content-type")
                          for name in row},
            })
        return out

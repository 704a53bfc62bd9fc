"""Test handler: reports what it received, so tests can check the handler contract."""

import os


class EchoHandler:
    def initialize(self, context):
        self.context = context
        self.initialized_in = os.getcwd()

    def handle(self, data, context):
        out = []
        for i, row in enumerate(data):
            inputs = {}
            for name, value in row.items():
                kind = type(value).__name__
                shown = value if isinstance(value, (str, dict, list, int, float)) else len(value)
                inputs[name] = {"type": kind, "value": shown}
            props = context.system_properties
            out.append({
                "inputs": inputs,
                "request_id": context.get_request_id(i),
                "x_test": context.get_request_header(i, "x-test"),
                "explain": context.get_request_header(i, "explain"),
                "url_path": context.get_request_header(i, "url_path"),
                "body_content_type": context.get_request_header(i, "body"),
                "batch_size": props["batch_size"],
                "gpu_id": props["gpu_id"],
                "model_dir_is_cwd": os.path.samefile(props["model_dir"], self.initialized_in),
                "model_name": context.model_name,
                "manifest_model_name": context.manifest["model"]["modelName"],
                "yaml": context.model_yaml_config,
                "batch_len": len(data),
            })
        return out

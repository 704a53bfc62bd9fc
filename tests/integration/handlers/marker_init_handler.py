"""Test handler whose initialize fails while the file named by `fail_marker` exists, so a test
can make only the workers started after some point fail."""

import os


class MarkerInit:
    def initialize(self, context):
        marker = context.model_yaml_config.get("fail_marker")
        if marker and os.path.exists(marker):
            raise RuntimeError("initialize refused: the fail marker exists")
        self.initialized = True

    def handle(self, data, context):
        return [{"ok": True} for _ in data]

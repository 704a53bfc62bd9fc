"""Test handler whose initialize announces itself (a file) and then sleeps, so a test can
act while a model is loading."""

import os
import time
from pathlib import Path


class SlowInit:
    def initialize(self, context):
        cfg = context.model_yaml_config
        if cfg.get("started_marker"):
            Path(cfg["started_marker"]).write_text(str(os.getpid()))
        time.sleep(float(cfg.get("init_sleep", 0)))

    def handle(self, data, context):
        return [{"ok": True} for _ in data]

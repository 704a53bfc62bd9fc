"""Read the ledger the test handlers append to: what each worker actually ran, in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def ledger_lines(path: Path) -> list[dict[str, Any]]:
    """One dict per order a handler ran (with the "_batch" it ran in); none before the first."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]

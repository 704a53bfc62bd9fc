"""bench.oip's report: paired ratios match each OIP run with the /predictions run of its rep."""

from __future__ import annotations

from typing import Any

from bench.oip import OIP, PREDICTIONS, cpu_table, paired_table


def _row(label: str, rep: int, rps: float, gateway: float = 100.0) -> dict[str, Any]:
    return {"label": label, "concurrency": 16, "rep": rep, "rps": rps,
            "gateway_cpu_us": gateway, "worker_cpu_us": 50.0}


def test_paired_ratios_pair_by_rep_and_level() -> None:
    rows = [_row(PREDICTIONS, 0, 1000), _row(OIP, 0, 900),
            _row(PREDICTIONS, 1, 500), _row(OIP, 1, 550),
            _row(PREDICTIONS, 2, 2000), _row(OIP, 2, 2000)]
    table = paired_table(rows)
    assert table[-1] == "| 16 | 0.900, 1.100, 1.000 | 1.000 |"


def test_cpu_table_takes_medians() -> None:
    rows = [_row(OIP, r, 1.0, gateway) for r, gateway in enumerate((90.0, 110.0, 100.0))]
    assert cpu_table(rows)[-1] == f"| {OIP} | 16 | 100 | 50 | 150 |"

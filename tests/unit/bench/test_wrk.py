"""Parsing wrk's --latency output into the load generator's row fields."""

from __future__ import annotations

import pytest

from bench.wrk import parse

OUTPUT = """Running 10s test @ http://127.0.0.1:8080/predictions/noop
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.23ms    1.10ms  20.31ms   85.00%
    Req/Sec     3.07k   200.00     3.30k    80.00%
  Latency Distribution
     50%  510.00us
     75%    5.60ms
     90%    6.20ms
     99%    1.20s
  30600 requests in 10.00s, 5.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:   3060.00
Transfer/sec:    500.00KB
"""


def test_parse_wrk_output():
    row = parse(OUTPUT)
    assert row["rps"] == 3060.0
    assert row["p50_ms"] == pytest.approx(0.51) and row["p90_ms"] == 6.2
    assert row["p99_ms"] == 1200.0 and row["max_ms"] == 20.31 and row["mean_ms"] == 5.23
    assert row["errors"] == {"status:non-2xx": 3, "socket:read": 2, "socket:timeout": 1}
    assert row["error_count"] == 6 and row["ok"] == 30597

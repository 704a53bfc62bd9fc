"""wrk (Debian's) as a second load generator: a C client that outruns the Python one.

The aiohttp generator spends ~190 µs of its core per request, so a server above ~5k req/s
measures the client; wrk spends a fraction of that. Rows use the same fields as loadgen's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.workload import Target

_LUA = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "{method}"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
"""

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(output: str) -> dict[str, Any]:
    """Requests/sec, the latency percentiles of `--latency`, and the error counts."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    percentiles = {int(p): _ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)$", output, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        output)
    errors: dict[str, int] = {}
    if non2xx:
        errors["status:non-2xx"] = int(non2xx.group(1))
    if sockets:
        for name, value in zip(("connect", "read", "write", "timeout"), sockets.groups(),
                               strict=True):
            if int(value):
                errors[f"socket:{name}"] = int(value)
    latency = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    count = int(total.group(1)) if total else 0
    return {"rps": rps, "p50_ms": percentiles.get(50, float("nan")),
            "p90_ms": percentiles.get(90, float("nan")),
            "p99_ms": percentiles.get(99, float("nan")),
            "max_ms": _ms(latency.group(3)) if latency else float("nan"),
            "mean_ms": _ms(latency.group(1)) if latency else float("nan"),
            "ok": count - errors.get("status:non-2xx", 0), "errors": errors,
            "error_count": sum(errors.values())}


def run(target: Target, concurrency: int, duration_s: int, warmup_s: int, label: str,
        rep: int, cpus: str | None = None) -> dict[str, Any]:
    """A discarded warm-up run, then the measured one; one row for the results file."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(target.body)
        script = Path(tmp) / "post.lua"
        script.write_text(_LUA.format(body=body, method=target.method,
                                      content_type=target.content_type))
        prefix = ["taskset", "-c", cpus] if cpus else []

        def wrk(seconds: int) -> str:
            cmd = [*prefix, "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency",
                   "-s", str(script), target.url]
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

        if warmup_s:
            wrk(warmup_s)
            time.sleep(1)  # let requests wrk abandoned at its deadline drain from the server
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        result = parse(wrk(duration_s))
    return {"label": label, "concurrency": concurrency, "rep": rep, "url": target.url,
            "mode": "wrk", "window_s": duration_s, "started_at": started, "client": "wrk",
            **result}

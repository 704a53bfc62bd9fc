"""What a gRPC call costs in grpc.aio itself, before any serving work: the floor under the
TorchServe-gRPC front end.

    python -m bench.grpc_floor [--seconds 5] [--reps 3] [--out bench/results/grpc-h2load]

Runs, one at a time on CPU 0, a bare grpc.aio server (uvloop, as the gateway uses) whose
unary method answers an empty message: `direct` answers at once; `hop` first sends 8 bytes to
an echo process over a Unix socket (also on CPU 0) and answers when they come back, as the
gateway waits for a worker. h2load on CPU 1 drives it (one connection, 16 streams). Reported:
calls/s, CPU µs per call of the server process (and of the echo process), and context
switches per call over the server's threads.

The servers are started as `python -m bench.grpc_floor --serve MODE PORT [SOCKET]`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EMPTY_CALL = b"\x00\x00\x00\x00\x00"  # one uncompressed gRPC message of 0 bytes
MESSAGE = 8


def serve(mode: str, port: int, path: str | None) -> None:
    import grpc
    import uvloop

    pending: collections.deque[asyncio.Future[bytes]] = collections.deque()

    class Replies(asyncio.Protocol):
        transport: asyncio.Transport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            for _ in range(len(data) // MESSAGE):
                pending.popleft().set_result(b"")

    replies = Replies()

    async def direct(request: bytes, context: Any) -> bytes:
        return b""

    async def hop(request: bytes, context: Any) -> bytes:
        answer = asyncio.get_running_loop().create_future()
        pending.append(answer)
        replies.transport.write(b"x" * MESSAGE)
        return await answer

    method = grpc.unary_unary_rpc_method_handler(direct if mode == "direct" else hop)

    class Any_(grpc.GenericRpcHandler):
        def service(self, handler_call_details: Any) -> Any:
            return method

    async def main() -> None:
        if mode == "hop":
            assert path is not None
            await asyncio.get_running_loop().create_unix_connection(lambda: replies, path)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([Any_()])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def echo(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn, _ = listener.accept()
    while data := conn.recv(65536):
        conn.sendall(data)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches" in line:
                total += int(line.split()[1])
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not start")


def measure(mode: str, seconds: float, payload: Path, tmp: Path) -> dict[str, Any]:
    port = _free_port()
    me = [sys.executable, "-m", "bench.grpc_floor"]
    pinned = ["taskset", "-c", "0"]
    helpers: list[subprocess.Popen[bytes]] = []
    path = str(tmp / f"echo-{port}.sock")
    try:
        if mode == "hop":
            helpers.append(subprocess.Popen([*pinned, *me, "--echo", path], cwd=REPO))
            while not os.path.exists(path):
                time.sleep(0.05)
        # stderr dropped: killing the server mid-call makes grpc print a traceback.
        server = subprocess.Popen([*pinned, *me, "--serve", mode, str(port), path], cwd=REPO,
                                  stderr=subprocess.DEVNULL)
        helpers.append(server)
        _wait_port(port)
        url = f"http://127.0.0.1:{port}/bench.Floor/Call"
        h2load = ["taskset", "-c", "1", "h2load", "-c", "1", "-m", "16", "-d", str(payload),
                  "-H", "content-type: application/grpc", "-H", "te: trailers"]
        subprocess.run([*h2load, "-D", "2", url], capture_output=True, check=True)  # warm
        cpu0 = {p.pid: _cpu_s(p.pid) for p in helpers}
        switches0 = _switches(server.pid)
        done = subprocess.run([*h2load, "-D", f"{seconds:g}", url], capture_output=True,
                              text=True, check=True)
        calls = next(int(line.split()[2]) for line in done.stdout.splitlines()
                     if line.startswith("status codes:"))
        cpu = {p.pid: _cpu_s(p.pid) - cpu0[p.pid] for p in helpers}
        return {"mode": mode, "calls": calls, "calls_per_s": calls / seconds,
                "server_us_per_call": cpu[server.pid] / calls * 1e6,
                "echo_us_per_call": (cpu[helpers[0].pid] / calls * 1e6 if mode == "hop"
                                     else None),
                "switches_per_call": (_switches(server.pid) - switches0) / calls,
                "load_1m": os.getloadavg()[0]}
    finally:
        for p in helpers:
            p.kill()
            p.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__)
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--echo", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/grpc-h2load")
    args = parser.parse_args(argv)
    if args.echo:
        echo(args.echo)
        return 0
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2] if len(args.serve) > 2 else None)
        return 0
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "empty.bin"
        payload.write_bytes(EMPTY_CALL)
        for rep in range(args.reps):
            for mode in ("direct", "hop") if rep % 2 == 0 else ("hop", "direct"):
                row = {"rep": rep, **measure(mode, args.seconds, payload, Path(tmp))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    (args.out / "raw" / "floor.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

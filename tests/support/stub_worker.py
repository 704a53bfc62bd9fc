"""A worker program for tests: speaks the real protocol through the real BlockingChannel, and
misbehaves the way STUB_MODE says once it gets a batch. `stub()` starts a real gateway-side
Worker (and its listener) on it, in place of `python -m serving.workers.main`.

Modes: echo (answers correctly), version (says HELLO with another protocol version), garbage,
bad-json, unknown-id, wrong-count, missing-status, other-batch, gateway-kind, huge (declares a
4 GiB answer and sends only the first STUB_HUGE_SEND bytes of it). Every message it gets is
written to STUB_LOG, one kind name a line, when that is set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from serving.errors import ServingError
from serving.types import InferenceRequest, InferenceResponse
from serving.workers.channel import BlockingChannel, send_buffers
from serving.workers.ipc import HEADER, PROTOCOL_VERSION, Kind, Message, encode
from serving.workers.lifeline import die_with_parent, expected_parent_from_env
from serving.workers.listener import WorkerListener
from serving.workers.process import Worker
from serving.workers.spec import WorkerSpec

ROOT = Path(__file__).resolve().parents[2]
Result = list[InferenceResponse] | ServingError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    die_with_parent(expected_parent_from_env())  # as the real worker: never outlive the test
    mode = os.environ.get("STUB_MODE", "echo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    channel = BlockingChannel(sock)
    version = PROTOCOL_VERSION + 1 if mode == "version" else PROTOCOL_VERSION
    channel.send(Kind.HELLO, {"worker_id": args.worker_id, "pid": os.getpid(),
                              "protocol": version})
    while (msg := channel.recv()) is not None:
        note(msg.kind.name)
        if msg.kind == Kind.LOAD:
            channel.send(Kind.LOADED, {"ok": True})
        elif msg.kind == Kind.PING:
            channel.send(Kind.PONG, {"seq": msg.meta.get("seq")})
        elif msg.kind == Kind.SHUTDOWN:
            return 0
        elif msg.kind == Kind.PREDICT:
            answer(sock, channel, mode, msg)
    return 0


def note(line: str) -> None:
    path = os.environ.get("STUB_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def answer(sock: socket.socket, channel: BlockingChannel, mode: str, msg: Message) -> None:
    items: list[dict[str, Any]] = [{"id": item["id"], "s": 200, "ct": "text/plain", "h": {}}
                                   for item in msg.meta["items"]]
    blobs = [bytes(b) for b in msg.blobs]
    meta: dict[str, Any] = {"batch": msg.meta["batch"], "items": items}
    if mode == "garbage":
        sock.sendall(struct.pack("<I", 2) + b"\x05\x00")
    elif mode == "bad-json":
        raw = b"{not json"
        body = HEADER.pack(0, Kind.RESULT, len(raw))[4:] + raw
        sock.sendall(struct.pack("<I", len(body)) + body)
    elif mode == "huge":
        sock.sendall(HEADER.pack(2**32 - 1, Kind.RESULT, 100))
        chunk = b"x" * (1 << 20)
        for _ in range(int(os.environ.get("STUB_HUGE_SEND", "0")) // len(chunk)):
            sock.sendall(chunk)
        note("SENT")
        time.sleep(3600)
    else:
        if mode == "unknown-id":
            items[0]["id"] = "someone-else"
        elif mode == "wrong-count":
            items.pop()
            blobs.pop()
        elif mode == "missing-status":
            del items[0]["s"]
        elif mode == "other-batch":
            meta["batch"] += 100
        kind = Kind.PREDICT if mode == "gateway-kind" else Kind.RESULT
        send_buffers(sock, encode(kind, meta, blobs))


class Stub:
    """A started Worker whose process is this program."""

    def __init__(self, worker: Worker, exits: list[Worker], log: Path) -> None:
        self.worker = worker
        self.exits = exits
        self.log = log

    def lines(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    async def run(self, requests: list[InferenceRequest], timeout: float | None = None
                  ) -> tuple[Result, list[Result]]:
        """Send one batch; its result, and every call of its callback so far."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        calls: list[Result] = []

        def done(result: Result) -> None:
            calls.append(result)
            if not fut.done():
                fut.set_result(result)

        self.worker.run(requests, done, timeout)
        return await asyncio.wait_for(fut, 30), calls

    async def wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)


@asynccontextmanager
async def stub(folder: Path, mode: str, env: dict[str, str] | None = None,
               max_response_size: int | None = None, worker_class: type[Worker] = Worker,
               name: str = "w") -> AsyncIterator[Stub]:
    listener = WorkerListener(folder / f"{name}.sock")
    await listener.start()
    log = folder / f"{name}.log"
    env = {"STUB_MODE": mode, "PYTHONPATH": str(ROOT), "STUB_LOG": str(log), **(env or {})}
    spec = WorkerSpec(load={}, env=env, module="tests.support.stub_worker",
                      max_response_size=max_response_size)
    exits: list[Worker] = []
    worker = worker_class(f"stub-{name}", 0, spec, listener, on_idle=lambda w: None,
                          on_exit=exits.append)
    try:
        await worker.start(timeout=60)
        yield Stub(worker, exits, log)
    finally:
        worker.kill()
        await listener.close()



if __name__ == "__main__":
    raise SystemExit(main())

"""The Unix socket every spawned worker connects to, and says HELLO on, to be matched up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from serving.errors import ServingError
from serving.workers.channel import WorkerConnection
from serving.workers.ipc import PROTOCOL_VERSION, Message

log = logging.getLogger(__name__)


class WorkerListener:
    """Accepts worker connections and hands each to whoever is waiting for that worker id."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._waiting: dict[str, asyncio.Future[WorkerConnection]] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: WorkerConnection(self._on_hello), self.path)
        os.chmod(self.path, 0o600)

    def expect(self, worker_id: str) -> asyncio.Future[WorkerConnection]:
        fut: asyncio.Future[WorkerConnection] = asyncio.get_running_loop().create_future()
        self._waiting[worker_id] = fut
        return fut

    def forget(self, worker_id: str) -> None:
        self._waiting.pop(worker_id, None)

    def _on_hello(self, conn: WorkerConnection, msg: Message) -> None:
        worker_id = str(msg.meta.get("worker_id"))
        fut = self._waiting.pop(worker_id, None)
        if fut is None or fut.done():
            conn.close()  # nobody started a worker of that id: not ours
            return
        version = msg.meta.get("protocol")
        if version != PROTOCOL_VERSION:
            # Its frames could mean something else here: refuse it before it is sent anything.
            log.error("worker %s (pid %s) speaks worker protocol %r, this server speaks %d; "
                      "refusing it (is it started from another installation of serving?)",
                      worker_id, msg.meta.get("pid"), version, PROTOCOL_VERSION)
            conn.close()
            fut.set_exception(ServingError(
                f"worker {worker_id} speaks worker protocol {version!r:.20}, this server "
                f"speaks {PROTOCOL_VERSION}: the worker and the gateway come from different "
                "installations"))
            return
        fut.set_result(conn)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

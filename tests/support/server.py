"""Start the real server (`python -m serving start`) on free loopback ports and stop it."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

ROOT = Path(__file__).resolve().parents[2]

# Lines that only a bug in the gateway writes: an exception escaping an ASGI app (uvicorn then
# drops the keep-alive connection under the client) or an asyncio task failing unobserved.
GATEWAY_BUG_MARKERS = ("Exception in ASGI application", "Task exception was never retrieved",
                       "Exception in callback")


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


@functools.cache
def ephemeral_low() -> int:
    """The lowest port the kernel gives to bind(0) and to outgoing connections."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback port nothing uses, below the kernel's ephemeral range, never handed out
    twice in this process. A port from bind(0) is ephemeral: between this choice and the
    server's bind, any outgoing connection on the box may be given it as its local port (a
    gRPC listener once failed to start with 'Address already in use' that way)."""
    high = ephemeral_low() - 1
    low = max(1024, high - 20000)
    for _ in range(500):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port found in {low}-{high}")


class ServerProcess:
    """A server subprocess; polls readiness, fails fast if it dies, kills its tree at the end."""

    def __init__(self, log_path: Path, *args: str, model_store: Path | None = None,
                 ts_config: Path | None = None, env: dict[str, str] | None = None,
                 enable_model_api: bool = True, token_auth: bool = False,
                 cwd: Path | None = None) -> None:
        """`token_auth=False` passes `--disable-token-auth`; True leaves TorchServe's default
        (on) and runs the server in a folder of its own (`cwd`, or one next to the log),
        where it writes `key_file.json`."""
        self.inference_port = free_port()
        self.management_port = free_port()
        self.metrics_port = free_port()
        self.grpc_inference_port = free_port()
        self.grpc_management_port = free_port()
        self.log_path = log_path
        self.token_auth = token_auth
        self.cwd = cwd or (log_path.parent / f"{log_path.name}.cwd" if token_auth else ROOT)
        env = dict(env or {})
        if self.cwd != ROOT:
            self.cwd.mkdir(parents=True, exist_ok=True)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(ROOT), env.get("PYTHONPATH", os.environ.get("PYTHONPATH")))
                if p)
        cmd = [sys.executable, "-m", "serving", "start",
               "--inference-address", f"http://127.0.0.1:{self.inference_port}",
               "--management-address", f"http://127.0.0.1:{self.management_port}",
               "--metrics-address", f"http://127.0.0.1:{self.metrics_port}",
               "--grpc-inference-port", str(self.grpc_inference_port),
               "--grpc-management-port", str(self.grpc_management_port)]
        if model_store is not None:
            cmd += ["--model-store", str(model_store)]
        if ts_config is not None:
            cmd += ["--ts-config", str(ts_config)]
        if enable_model_api:
            cmd.append("--enable-model-api")
        if not token_auth:
            cmd.append("--disable-token-auth")
        cmd += list(args)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **env},
                                     start_new_session=True)
        self.inference = httpx.Client(base_url=f"http://127.0.0.1:{self.inference_port}",
                                      timeout=120)
        self.management = httpx.Client(base_url=f"http://127.0.0.1:{self.management_port}",
                                       timeout=300)
        self.metrics = httpx.Client(base_url=f"http://127.0.0.1:{self.metrics_port}",
                                    timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")

    @property
    def key_file(self) -> Path:
        return self.cwd / "key_file.json"

    def keys(self) -> dict[str, dict[str, str]]:
        """The server's key_file.json: {"management"|"inference"|"API": {"key", ...}}."""
        return dict(json.loads(self.key_file.read_text()))

    def bearer(self, kind: str) -> dict[str, str]:
        """The header that authorizes a call with the key of `kind` (as the file names it)."""
        return {"Authorization": f"Bearer {self.keys()[kind]['key']}"}

    def _auth(self, kind: str) -> dict[str, str]:
        return self.bearer(kind) if self.token_auth else {}

    def wait_ready(self, models: tuple[str, ...] = (), timeout: float = 180) -> ServerProcess:
        """Wait until the APIs answer and each named model has all its workers READY."""
        deadline = time.monotonic() + timeout
        pending = list(models)
        while time.monotonic() < deadline:
            self.check_alive()
            if self.token_auth and not self.key_file.exists():
                time.sleep(0.2)
                continue
            try:
                ping = self.inference.get("/ping", headers=self._auth("inference"))
                if ping.status_code in (200, 500, 503):
                    pending = [m for m in pending if not self._model_ready(m)]
                    if not pending:
                        return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready (waiting for {pending}):\n{self.log()[-4000:]}")

    def _model_ready(self, name: str) -> bool:
        r = self.management.get(f"/models/{name}", headers=self._auth("management"))
        if r.status_code != 200:
            return False
        workers = r.json()[0]["workers"]
        return bool(workers) and all(w["status"] == "READY" for w in workers)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then SIGKILL of the whole process group if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.inference.close()
        self.management.close()
        self.metrics.close()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def gateway_bugs(self) -> list[str]:
        """Log lines that show the gateway failed in a way no client was told about."""
        return [line for line in self.log().splitlines()
                if any(marker in line for marker in GATEWAY_BUG_MARKERS)]

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        bugs = self.gateway_bugs()
        if et is None and bugs:
            raise AssertionError(f"the server logged unhandled errors: {bugs}\n"
                                 f"{self.log()[-4000:]}")

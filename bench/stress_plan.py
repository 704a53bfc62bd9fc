"""The stress benchmark's scenarios: model, settings, load level and fault of each one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.archive import NOOP_HANDLER, build_mar, derive_archive
from bench.tsconfig import ModelConfig

FAULT_HANDLER = NOOP_HANDLER.with_name("fault_handler.py")
PING_INTERVAL_S = 1.0  # small, so a stopped worker is found within a fault scenario
PING_TIMEOUT_S = 2.0
FAULT_RESPONSE_TIMEOUT_S = 2
SLEEP_FAULT_S = 4.0  # past the fault model's response timeout
NORMAL_BODY = b'{"x": 1}'


@dataclass(frozen=True)
class Durations:
    """Seconds per kind of scenario; `--quick` shrinks them all."""

    calibrate: float = 10.0
    overload: float = 60.0
    fault: float = 25.0
    soak: float = 600.0

    @classmethod
    def quick(cls) -> Durations:
        return cls(calibrate=3.0, overload=5.0, fault=6.0, soak=30.0)


SOAK_MAX_IN_FLIGHT = 256


@dataclass(frozen=True)
class Scenario:
    """One server start, one load at `load_factor` x the rate of `rate_of`, maybe one fault."""

    name: str
    kind: str  # overload | fault | soak
    model: str
    config: ModelConfig
    rate_of: str  # the calibrated model whose sustainable rate the load is a multiple of
    load_factor: float
    duration_s: float
    job_queue_size: int = 100
    injector: str | None = None  # a key of stress_faults.INJECTORS
    body_fault: dict[str, object] | None = None  # body of the faulty requests
    fault_period_s: float = 0.0  # one faulty request per this many seconds of load
    properties: dict[str, str] = field(default_factory=dict)
    # The client's cap on requests in flight (= open connections). The soak caps it low: it
    # measures memory at a steady load, and a client pool that grows to thousands of
    # connections after a stall of the shared box would measure that pool (~12 KiB of
    # gateway memory per open connection), not the server. Requests the cap holds back are
    # reported as skipped.
    max_in_flight: int = 4000

    def bodies(self, normal: bytes, rate: float) -> list[bytes]:
        """Request i carries bodies[i % len]: one faulty body per `fault_period_s` of load."""
        if self.body_fault is None:
            return [normal]
        every = max(2, round(rate * self.fault_period_s))
        return [normal] * (every - 1) + [json.dumps(self.body_fault).encode()]


def prepare_archives(store: Path) -> None:
    """The fault archive (real archiver) and copies of the default archives with a client
    timeout set (`clientTimeoutInMills`: a server that honours it answers 504 from the queue)."""
    build_mar("fault", FAULT_HANDLER, store)
    derive_archive(store / "noop.mar", "noop-stress", {"clientTimeoutInMills": 2000})
    if (store / "resnet50.mar").exists():  # built only when a chosen scenario needs it
        derive_archive(store / "resnet50.mar", "resnet50-stress", {"clientTimeoutInMills": 4000})


def scenarios(d: Durations, overload_factor: float, fault_load: float,
              soak_load: float) -> list[Scenario]:
    noop = ModelConfig("noop-stress.mar", workers=1, batch_size=1, max_batch_delay_ms=5,
                       response_timeout_s=5)
    resnet = ModelConfig("resnet50-stress.mar", workers=1, batch_size=8, max_batch_delay_ms=10,
                         response_timeout_s=10)
    fault = ModelConfig("fault.mar", workers=2, batch_size=4, max_batch_delay_ms=5,
                        response_timeout_s=FAULT_RESPONSE_TIMEOUT_S)
    pings = {"worker_ping_interval": str(PING_INTERVAL_S),
             "worker_ping_timeout": str(PING_TIMEOUT_S)}

    def faulty(name: str, **kw: object) -> Scenario:
        return Scenario(f"fault-{name}", "fault", "faulty", fault, "noop", fault_load,
                        d.fault, properties=pings, **kw)  # type: ignore[arg-type]

    return [
        Scenario("overload-noop", "overload", "noop", noop, "noop", overload_factor,
                 d.overload, job_queue_size=100),
        # 2 s of queue at the calibrated rate: set in run_scenario from the measured rate.
        Scenario("overload-resnet50", "overload", "resnet50", resnet, "resnet50",
                 overload_factor, d.overload, job_queue_size=0),
        faulty("kill9", injector="kill9"),
        faulty("sigstop", injector="sigstop"),
        faulty("raise", body_fault={"fault": "raise"}, fault_period_s=0.05),
        faulty("wrong-count", body_fault={"fault": "wrong_count"}, fault_period_s=0.05),
        faulty("sleep", body_fault={"fault": "sleep", "seconds": SLEEP_FAULT_S},
               fault_period_s=5.0),
        faulty("scale", injector="scale"),
        faulty("scale-zero", injector="scale-zero"),
        Scenario("soak-noop", "soak", "noop", noop, "noop", soak_load, d.soak,
                 max_in_flight=SOAK_MAX_IN_FLIGHT),
    ]

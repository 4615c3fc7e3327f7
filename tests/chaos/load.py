"""A small closed-loop load driver for fault tests: bounded in count and time, loopback only."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc, types_pb2

from meshserve_runtime.channels import service_config
from meshserve_runtime.protocol import GATEWAY_HEALTH_NAME

#: One kind of call a load thread makes: (stub, timeout) -> PredictResponse.
Call = Callable[[prediction_pb2_grpc.PredictionServiceStub, float], prediction_pb2.PredictResponse]


def entity_request(driver: int = 1001, customer: int = 2001) -> prediction_pb2.PredictEntitiesRequest:
    row = types_pb2.Row()
    row.values["driver_id"].int64_value = driver
    row.values["customer_id"].int64_value = customer
    return prediction_pb2.PredictEntitiesRequest(entities=[row])


def entities_call(drivers: Sequence[int] = (1001,), customers: Sequence[int] = (2001,)) -> Call:
    request = prediction_pb2.PredictEntitiesRequest()
    for d, c in zip(drivers, customers, strict=True):
        row = request.entities.add()
        row.values["driver_id"].int64_value = d
        row.values["customer_id"].int64_value = c
    return lambda stub, timeout: stub.PredictEntities(request, timeout=timeout)


def rows_call(rows: Sequence[dict[str, float]]) -> Call:
    request = prediction_pb2.PredictRequest()
    for values in rows:
        row = request.rows.add()
        for name, v in values.items():
            row.values[name].double_value = v
    return lambda stub, timeout: stub.Predict(request, timeout=timeout)


def replicated_client_options(retry_attempts: int = 3) -> list[tuple[str, object]]:
    """A caller of several gateways, set up as meshserve's own internal channels are:
    round_robin over every address, health-checked (a draining or starting gateway gets no
    calls), UNAVAILABLE retried (throttled), quick reconnects."""
    return [
        ("grpc.service_config", service_config(retry_attempts, health_service=GATEWAY_HEALTH_NAME)),
        ("grpc.enable_retries", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


@dataclass
class LoadResult:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies_ok: list[float] = field(default_factory=list)
    versions: set[tuple[str, str]] = field(default_factory=set)
    mixed: int = 0
    #: One example message per non-OK status, for reports and assertion messages.
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def lost(self) -> int:
        return self.sent - self.answered

    def p99_ok(self) -> float:
        lat = sorted(self.latencies_ok)
        return lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")


class Load:
    """`concurrency` threads, each sending PredictEntities until stopped (or max_seconds)."""

    def __init__(
        self,
        target: str,
        concurrency: int = 4,
        timeout: float = 5.0,
        max_seconds: float = 120.0,
        *,
        calls: Sequence[Call] = (),
        options: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.target = target
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_seconds = max_seconds
        #: Each thread cycles through these (default: one single-entity PredictEntities).
        self.calls: Sequence[Call] = calls or (entities_call(),)
        self.options = list(options)
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _worker(self, first: int) -> None:
        end = time.monotonic() + self.max_seconds
        i = first
        with grpc.insecure_channel(self.target, options=self.options) as channel:
            stub = prediction_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set() and time.monotonic() < end:
                call = self.calls[i % len(self.calls)]
                i += 1
                with self._lock:
                    self.result.sent += 1
                start = time.perf_counter()
                try:
                    reply = call(stub, self.timeout)
                    code = "OK"
                except grpc.RpcError as err:
                    reply, code = None, err.code().name
                    self.result.examples.setdefault(code, err.details() or "")
                elapsed = time.perf_counter() - start
                with self._lock:
                    self.result.statuses[code] += 1
                    if reply is not None:
                        self.result.latencies_ok.append(elapsed)
                        self.result.versions.add((reply.model.version, reply.preprocessor.version))
                        if reply.model.run_id != reply.preprocessor.run_id:
                            self.result.mixed += 1
                if code != "OK":
                    time.sleep(0.01)  # a failing client backs off a little, as real ones do

    def __enter__(self) -> Load:
        for n in range(self.concurrency):
            t = threading.Thread(target=self._worker, args=(n,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        hung = [t for t in self._threads if t.is_alive()]
        assert not hung, f"{len(hung)} load threads hung"

    def wait_for(self, predicate, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if predicate(self.result):
                    return True
            time.sleep(0.1)
        return False

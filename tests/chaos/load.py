"""A small closed-loop load driver for fault tests: bounded in count and time, loopback only."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from meshserve.v1 import prediction_pb2, prediction_pb2_grpc, types_pb2


def entity_request(driver: int = 1001, customer: int = 2001) -> prediction_pb2.PredictEntitiesRequest:
    row = types_pb2.Row()
    row.values["driver_id"].int64_value = driver
    row.values["customer_id"].int64_value = customer
    return prediction_pb2.PredictEntitiesRequest(entities=[row])


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

    def __init__(self, target: str, concurrency: int = 4, timeout: float = 5.0, max_seconds: float = 120.0) -> None:
        self.target = target
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _worker(self) -> None:
        request = entity_request()
        end = time.monotonic() + self.max_seconds
        with grpc.insecure_channel(self.target) as channel:
            stub = prediction_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set() and time.monotonic() < end:
                with self._lock:
                    self.result.sent += 1
                start = time.perf_counter()
                try:
                    reply = stub.PredictEntities(request, timeout=self.timeout)
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
        for _ in range(self.concurrency):
            t = threading.Thread(target=self._worker, daemon=True)
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

"""Readiness that follows a dependency: the runner's readiness hook, and the features
service's store readiness, against a fake store probe (no Feast, no processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshserve_runtime.errors import Unavailable
from meshserve_runtime.server import ReadinessCallback, Service, ServiceRunner
from meshserve_runtime.settings import ServerSettings

from meshserve_features.readiness import StoreReadiness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Recorder:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def __call__(self, ready: bool) -> None:
        self.calls.append(ready)


class FakeProbe:
    def __init__(self) -> None:
        self.failing = False
        self.runs = 0

    async def __call__(self) -> None:
        self.runs += 1
        if self.failing:
            raise Unavailable("online store redis at 127.0.0.1:1 is unavailable: ConnectionError: refused")


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < end:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_probe_failures_flip_not_ready_and_a_probe_success_flips_back() -> None:
    rec, probe = Recorder(), FakeProbe()
    r = StoreReadiness(interval_s=0.02)
    r.bind(rec)
    r.start(probe, "redis at 127.0.0.1:1")
    try:
        assert await eventually(lambda: probe.runs >= 2)
        assert set(rec.calls) == {True}
        probe.failing = True
        assert await eventually(lambda: rec.calls[-1] is False)
        assert not r.ready
        probe.failing = False
        assert await eventually(lambda: rec.calls[-1] is True)
        assert r.ready
    finally:
        await r.stop()
    runs = probe.runs
    await asyncio.sleep(0.1)
    assert probe.runs == runs  # stopped means stopped


async def test_a_failed_read_flips_at_once_and_only_a_probe_declares_recovery() -> None:
    rec, probe = Recorder(), FakeProbe()
    r = StoreReadiness(interval_s=3600)  # no probe within the test
    r.bind(rec)
    r.start(probe, "redis")
    try:
        await r.report(False, "a read failed")
        assert rec.calls == [False] and not r.ready
    finally:
        await r.stop()


async def test_interval_zero_never_touches_readiness() -> None:
    rec, probe = Recorder(), FakeProbe()
    r = StoreReadiness(interval_s=0)
    r.bind(rec)
    r.start(probe, "redis")
    await r.report(False, "a read failed")
    await asyncio.sleep(0.05)
    assert rec.calls == [] and probe.runs == 0
    await r.stop()


class Dependent(Service):
    """A service that keeps the readiness switch the runner hands it."""

    name = "test.Dependent"

    def __init__(self) -> None:
        self.set_ready: ReadinessCallback | None = None
        self.loaded = asyncio.Event()

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        return [self.name]

    def bind_readiness(self, set_ready: ReadinessCallback) -> None:
        self.set_ready = set_ready

    async def load(self) -> bool:
        assert self.set_ready is not None, "the switch comes before load()"
        await self.set_ready(True)  # too early: load() has not returned yet, so ignored
        await self.loaded.wait()
        return True


async def test_runner_hands_a_switch_that_works_only_between_load_and_drain() -> None:
    service = Dependent()
    runner = ServiceRunner(service, ServerSettings(port=0, metrics_port=0, grace_period_s=0, log_json=False))
    await runner.start()
    loader = asyncio.create_task(runner.load_until_ready())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)

            async def status() -> int:
                return (await health.Check(health_pb2.HealthCheckRequest(service=service.name), timeout=5)).status

            assert await eventually(lambda: service.set_ready is not None)
            assert await status() == NOT_SERVING
            service.loaded.set()
            await loader
            assert await status() == SERVING
            await service.set_ready(False)
            assert await status() == NOT_SERVING
            await service.set_ready(True)
            assert await status() == SERVING
            runner.request_stop()
            await service.set_ready(False)  # stopping: the drain owns readiness from here
            assert await status() == SERVING
    finally:
        runner.request_stop()
        loader.cancel()
        await runner.drain()

"""The heap freeze (meshserve_runtime.heap): the runner freezes once the service is loaded,
not before and not when told not to; a refreeze collects cycles among frozen objects that
were dropped (what a retired artifact version leaves behind). Each test starts unfrozen:
tests/conftest.py thaws the pytest process after every test."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Sequence

import grpc
import pytest
from prometheus_client import REGISTRY
from pydantic_settings import SettingsConfigDict

from meshserve_runtime import heap
from meshserve_runtime.server import Service, ServiceRunner
from meshserve_runtime.settings import ServerSettings


class HeapTestSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_HEAPTEST_")


class Cycle:
    """Two of these pointing at each other: only the cyclic collector can free them."""

    def __init__(self) -> None:
        self.other: Cycle | None = None


class Loader(Service):
    name = "meshserve.test.Heap"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.frozen_while_loading: int | None = None

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        return [self.name]

    async def load(self) -> bool:
        await self.release.wait()
        self.frozen_while_loading = gc.get_freeze_count()
        return True


def make_cycle() -> weakref.ref[Cycle]:
    a, b = Cycle(), Cycle()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_runner_freezes_the_heap_once_loaded_unless_disabled(enabled: bool) -> None:
    service = Loader()
    runner = ServiceRunner(service, HeapTestSettings(host="127.0.0.1", port=0, metrics_port=0, gc_freeze=enabled))
    await runner.start()
    try:
        loading = asyncio.create_task(runner.load_until_ready())
        await asyncio.sleep(0.05)
        assert gc.get_freeze_count() == 0  # nothing frozen before the artifacts are in
        service.release.set()
        await asyncio.wait_for(loading, 10)
        assert service.frozen_while_loading == 0
        if enabled:
            assert gc.get_freeze_count() > 1000
            # The gauge holds the count at freeze time; refcounting frees some frozen objects since.
            assert REGISTRY.get_sample_value("meshserve_gc_frozen_objects") >= gc.get_freeze_count()
        else:
            assert gc.get_freeze_count() == 0
    finally:
        await runner.drain()


def test_a_refreeze_collects_cycles_dropped_after_the_freeze() -> None:
    ref = make_cycle()
    holder = [ref()]  # alive at freeze time, like a loaded artifact
    heap.freeze("test")
    assert gc.get_freeze_count() > 0
    holder.clear()  # retired: only its cycle keeps it
    gc.collect()
    assert ref() is not None  # frozen objects are out of the collector's reach...
    heap.refreeze("test")
    assert ref() is None  # ...until the refreeze
    assert gc.get_freeze_count() > 0  # and the heap is frozen again


def test_refreeze_is_a_no_op_when_nothing_was_frozen() -> None:
    ref = make_cycle()
    holder = [ref()]
    heap.refreeze("test")
    assert gc.get_freeze_count() == 0
    holder.clear()
    gc.collect()
    assert ref() is None

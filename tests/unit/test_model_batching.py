"""Adaptive batching over a small real torch module: merging, split, queue bound, no idle delay."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import torch

from meshserve_runtime.errors import ResourceExhausted
from meshserve_runtime.registry import ResolvedArtifact

from meshserve_model.batching import Batcher, batch_buckets
from meshserve_model.model import LoadedModel

from tests.unit.test_model_servicer import N_FEATURES, Tiny


class Recording:
    """A LoadedModel's predict that remembers each forward pass's batch size."""

    def __init__(self, delay_s: float = 0.0) -> None:
        torch.manual_seed(0)
        artifact = ResolvedArtifact(name="m", version="1", run_id="r", alias="production", source="")
        self.model = LoadedModel(artifact, Tiny().eval(), torch.device("cpu"), N_FEATURES, "pytorch")
        self.sizes: list[int] = []
        self.delay_s = delay_s

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(len(x))
        if self.delay_s:
            time.sleep(self.delay_s)  # a slow forward pass: calls pile up meanwhile
        return self.model.predict(x)


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)


def test_buckets_cover_every_size_up_to_the_max() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 100)


async def test_concurrent_calls_merge_and_split_back_correctly() -> None:
    rec = Recording()
    batcher = Batcher(rec, max_batch_size=64, max_queue_delay_us=2000, max_queue_size=100)
    inputs = [_rows(i % 3 + 1, seed=i) for i in range(20)]  # 1-3 rows each, 40 rows in all
    outs = await asyncio.gather(*(batcher.infer(x) for x in inputs))
    assert sum(rec.sizes) == sum(len(x) for x in inputs)
    assert len(rec.sizes) < len(inputs) and max(rec.sizes) > 3  # merged
    for x, out in zip(inputs, outs):
        assert out.shape == (len(x), 1)
        np.testing.assert_allclose(out, rec.model.predict(x), atol=1e-6)  # each caller gets its own rows
    await batcher.close()


async def test_batches_respect_max_batch_size() -> None:
    rec = Recording()
    batcher = Batcher(rec, max_batch_size=8, max_queue_delay_us=0, max_queue_size=100)
    await asyncio.gather(*(batcher.infer(_rows(3, i)) for i in range(10)))
    assert max(rec.sizes) <= 8 and sum(rec.sizes) == 30
    # A single call larger than the max still runs (alone), never split.
    out = await batcher.infer(_rows(20, 99))
    assert out.shape == (20, 1) and rec.sizes[-1] == 20
    await batcher.close()


async def test_full_queue_answers_resource_exhausted_at_once() -> None:
    rec = Recording(delay_s=0.05)
    batcher = Batcher(rec, max_batch_size=1, max_queue_delay_us=0, max_queue_size=4)
    tasks = [asyncio.ensure_future(batcher.infer(_rows(1, i))) for i in range(4)]
    await asyncio.sleep(0)  # all four queued; the worker has not run yet
    start = time.perf_counter()
    with pytest.raises(ResourceExhausted) as info:
        await batcher.infer(_rows(1, 9))
    assert time.perf_counter() - start < 0.01
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(o.shape == (1, 1) for o in await asyncio.gather(*tasks))  # the queued ones still finish
    await batcher.close()


async def test_a_lone_call_is_not_delayed() -> None:
    rec = Recording()
    delay_us = 200_000  # huge on purpose: an idle model must not wait for company at all
    batcher = Batcher(rec, max_batch_size=64, max_queue_delay_us=delay_us, max_queue_size=10)
    await batcher.infer(_rows(1, 0))  # first call starts the worker
    times = []
    for i in range(20):
        start = time.perf_counter()
        await batcher.infer(_rows(1, i))
        times.append(time.perf_counter() - start)
    assert max(times) < 0.02, times
    await batcher.close()


async def test_under_load_a_call_never_waits_longer_than_the_delay() -> None:
    rec = Recording()
    delay_us = 30_000
    batcher = Batcher(rec, max_batch_size=1000, max_queue_delay_us=delay_us, max_queue_size=1000)
    await asyncio.gather(*(batcher.infer(_rows(1, i)) for i in range(5)))  # now "under load"
    start = time.perf_counter()
    await batcher.infer(_rows(1, 0))  # the batch can't fill: waits at most the delay
    elapsed = time.perf_counter() - start
    assert elapsed < delay_us / 1e6 + 0.02, elapsed
    await batcher.close()


async def test_cancelled_caller_is_skipped() -> None:
    rec = Recording(delay_s=0.02)
    batcher = Batcher(rec, max_batch_size=64, max_queue_delay_us=0, max_queue_size=10)
    first = asyncio.ensure_future(batcher.infer(_rows(1, 0)))
    await asyncio.sleep(0)
    gone = asyncio.ensure_future(batcher.infer(_rows(5, 1)))
    kept = asyncio.ensure_future(batcher.infer(_rows(2, 2)))
    await asyncio.sleep(0)
    gone.cancel()
    await first
    assert (await kept).shape == (2, 1)
    assert 5 not in rec.sizes and 7 not in rec.sizes
    await batcher.close()


def test_traced_module_matches_the_loaded_one_at_every_batch_size() -> None:
    from meshserve_model.model import traced_for_inference

    torch.manual_seed(0)
    module = Tiny().eval()
    traced = traced_for_inference(module, N_FEATURES, torch.device("cpu"), torch.float32)
    assert traced is not None
    with torch.inference_mode():
        for n in (1, 5, 300):
            x = torch.randn(n, N_FEATURES)
            torch.testing.assert_close(traced(x), module(x), atol=1e-7, rtol=0)


def test_on_cpu_the_trace_is_served_frozen_and_optimized_for_inference() -> None:
    from meshserve_model.model import traced_for_inference

    torch.manual_seed(0)
    module = Tiny().eval()
    served = traced_for_inference(module, N_FEATURES, torch.device("cpu"), torch.float32)
    assert isinstance(served, torch.jit.ScriptModule)
    assert not list(served.parameters())  # frozen: the weights are constants of the graph


def test_a_frozen_form_that_differs_falls_back_to_the_plain_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshserve_model.model import traced_for_inference

    class Off(torch.nn.Module):
        """What a faulty graph rewrite would give: close, but not the same outputs."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + 1e-3

    monkeypatch.setattr(torch.jit, "optimize_for_inference", lambda m: Off(m))
    torch.manual_seed(0)
    module = Tiny().eval()
    served = traced_for_inference(module, N_FEATURES, torch.device("cpu"), torch.float32)
    assert isinstance(served, torch.jit.ScriptModule) and list(served.parameters())  # the unfrozen trace
    with torch.inference_mode():
        x = torch.randn(7, N_FEATURES)
        torch.testing.assert_close(served(x), module(x), atol=1e-7, rtol=0)

"""Adaptive batching: concurrent ModelInfer calls merged into one forward pass.

One Batcher per LoadedModel (so a batch never mixes versions). Callers enqueue their
rows and await a future; one worker task takes whatever is queued whenever the model
is free, runs one forward pass and splits the output back per caller.

Policy (why it adds no delay at concurrency 1):
- The worker never sleeps a fixed delay. When the model is free it takes what is queued.
- Only when the previous batch already merged several calls (i.e. there is concurrent
  load) does it wait for company, and then at most `max_queue_delay_us` counted from the
  first queued call's arrival; a full batch dispatches at once.
- The queue is bounded: past `max_queue_size` waiting calls, ResourceExhausted at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass, field

import numpy as np

from meshserve_runtime.errors import ResourceExhausted
from meshserve_runtime.tracing import current_context, link_to, span

from meshserve_model import metrics

log = logging.getLogger("meshserve.model.batching")

Predict = Callable[[np.ndarray], np.ndarray]


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes worth warming up: powers of two up to max_batch_size, and max itself."""
    sizes = []
    n = 1
    while n < max_batch_size:
        sizes.append(n)
        n *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


@dataclass(slots=True)
class _Pending:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)
    # The caller's trace context: the worker task runs in the context of whichever call
    # started it, so batch spans are parented explicitly instead.
    trace_context: Any = field(default_factory=current_context)


class Batcher:
    """Merges concurrent `infer()` calls into forward passes of at most max_batch_size rows."""

    def __init__(self, predict: Predict, max_batch_size: int, max_queue_delay_us: int, max_queue_size: int) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_queue_delay_us / 1e6
        self.max_queue_size = max_queue_size
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._busy = False
        self._under_load = False  # the last batch merged several calls
        self._closed = False

    @property
    def idle(self) -> bool:
        """Nothing queued and no forward pass running (safe to free the model)."""
        return not self._queue and not self._busy

    async def infer(self, x: np.ndarray) -> np.ndarray:
        """Rows in, this caller's outputs back (after a shared forward pass)."""
        if self._closed:
            return self.predict(x)  # a straggler on a retired version: serve it unbatched
        if len(self._queue) >= self.max_queue_size:
            metrics.REJECTED.inc()
            raise ResourceExhausted(
                f"model queue is full ({self.max_queue_size} calls waiting); retry with backoff"
            )
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")
        item = _Pending(x, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._queued_rows += len(x)
        metrics.QUEUE_DEPTH.inc()
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._closed = True
        while not self.idle:
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _wait_for_company(self) -> None:
        """Under load: let the batch fill, at most until the oldest call's deadline."""
        deadline = self._queue[0].enqueued + self.max_delay_s
        with span("batch_wait", parent=self._queue[0].trace_context, queued=len(self._queue)):
            while self._queued_rows < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    return

    def _take(self) -> list[_Pending]:
        """Pop queued calls up to max_batch_size rows (at least one, even if it is larger)."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            n = len(self._queue[0].x)
            if batch and rows + n > self.max_batch_size:
                break
            item = self._queue.popleft()
            self._queued_rows -= n
            metrics.QUEUE_DEPTH.dec()
            if item.future.done():  # the caller gave up (deadline, cancel): skip its rows
                continue
            batch.append(item)
            rows += n
        return batch

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                if self._under_load and self.max_delay_s > 0 and self._queued_rows < self.max_batch_size:
                    await self._wait_for_company()
                batch = self._take()
                if not batch:
                    continue
                self._under_load = len(batch) > 1 or bool(self._queue)
                self._dispatch(batch)
                # Let the callers' handlers (and new arrivals) run before the next batch.
                await asyncio.sleep(0)

    def _dispatch(self, batch: list[_Pending]) -> None:
        now = time.perf_counter()
        for item in batch:
            metrics.QUEUE_WAIT.observe(now - item.enqueued)
        x = batch[0].x if len(batch) == 1 else np.concatenate([item.x for item in batch])
        metrics.BATCH_SIZE.observe(len(x))
        self._busy = True
        try:
            # Inline on the loop: a forward pass of the small MLP is tens of microseconds,
            # cheaper than a thread hand-off.
            links = [lk for lk in (link_to(item.trace_context) for item in batch[1:]) if lk is not None]
            with span("forward", parent=batch[0].trace_context, links=links or None, batch_size=len(x), calls=len(batch)):
                out = self.predict(x)
        except Exception as err:  # every caller of this batch sees the failure
            log.exception("forward pass failed", extra={"batch_size": len(x)})
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        finally:
            self._busy = False
            metrics.INFERENCE.observe(time.perf_counter() - now)
        start = 0
        for item in batch:
            n = len(item.x)
            if not item.future.done():
                item.future.set_result(out[start:start + n])
            start += n

"""Gateway-only instrumentation: the time each pipeline stage takes, as a metric and a span."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Histogram

from meshserve_runtime.metrics import LATENCY_BUCKETS
from meshserve_runtime.tracing import span

STAGE_DURATION = Histogram(
    "meshserve_gateway_stage_duration_seconds",
    "Time spent in each pipeline stage (features, preprocess, model, total) per request.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time one pipeline stage (the one place to add per-stage instrumentation).

    The span (`gateway.<stage>`) is the parent of the stage's client call, so a trace
    shows the gateway's own time between hops apart from the hop itself.
    """
    start = time.perf_counter()
    try:
        with span(f"gateway.{name}", stage=name):
            yield
    finally:
        STAGE_DURATION.labels(name).observe(time.perf_counter() - start)

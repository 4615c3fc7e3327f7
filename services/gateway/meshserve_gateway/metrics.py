"""Gateway-only instrumentation: the time each pipeline stage takes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Histogram

from meshserve_runtime.metrics import LATENCY_BUCKETS

STAGE_DURATION = Histogram(
    "meshserve_gateway_stage_duration_seconds",
    "Time spent in each pipeline stage (features, preprocess, model) per request.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time one pipeline stage (the one place to add per-stage instrumentation)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_DURATION.labels(name).observe(time.perf_counter() - start)

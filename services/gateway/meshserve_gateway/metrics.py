"""Gateway-only metrics: the time each pipeline stage takes."""

from __future__ import annotations

from prometheus_client import Histogram

from meshserve_runtime.metrics import LATENCY_BUCKETS

STAGE_DURATION = Histogram(
    "meshserve_gateway_stage_duration_seconds",
    "Time spent in each pipeline stage (features, preprocess, model) per request.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
